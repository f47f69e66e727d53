"""Applies to every test path (``tests/`` and ``plugins/*/tests``): no test touches the user's score cache."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def isolated_score_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own score cache (subprocesses inherit it), never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
