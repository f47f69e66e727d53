from __future__ import annotations

from pathlib import Path

import pytest

from lightning_prune.testing import build_bert_with_heads, build_t5, write_glue_dir

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def glue_dir(tmp_path_factory) -> Path:
    return write_glue_dir(tmp_path_factory.mktemp("glue"))


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory) -> Path:
    return build_bert_with_heads(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="session")
def t5_dir(tmp_path_factory) -> Path:
    return build_t5(tmp_path_factory.mktemp("t5"))


@pytest.fixture(scope="session")
def t5_gated_dir(tmp_path_factory) -> Path:
    return build_t5(tmp_path_factory.mktemp("t5gated"), gated=True)


@pytest.fixture(params=["bert", "t5", "t5_gated"])
def model_dir(request) -> Path:
    return request.getfixturevalue(f"{request.param}_dir")


def require_shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA
