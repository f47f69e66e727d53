"""Plugin loading is robust: broken, ambiguous or misbehaving scorers fail clearly, and only when chosen."""

from __future__ import annotations

import json

import pytest

from conftest import fit_free_args, install_plugin, run_cli
from lightning_prune.cli import main

ENTRY_POINTS = """\
[lightning_prune.scorers]
broken = fake_missing_module:Scorer
nan_scores = fake_plugin_module:NaNScorer
wrong_shape = fake_plugin_module:WrongShapeScorer
not_a_scorer = fake_plugin_module:helper
random = fake_plugin_module:NaNScorer
"""

MODULE = """
import torch
from lightning_prune.scorers import NeuronScorer


class NaNScorer(NeuronScorer):
    needs_data = False

    def __call__(self, model, batch=None):
        return [torch.full((layer.size,), float("nan")) for layer in model.ffn_layers()]


class WrongShapeScorer(NeuronScorer):
    def __call__(self, model, batch):
        return [torch.ones(layer.size + 1) for layer in model.ffn_layers()]


def helper():
    return None
"""


@pytest.fixture
def fake_plugins(tmp_path, monkeypatch):
    """A distribution 'fake-plugins' on sys.path, registering five scorers through entry points."""
    site = install_plugin(tmp_path, "fake-plugins", ENTRY_POINTS, "fake_plugin_module", MODULE)
    monkeypatch.syspath_prepend(str(site))
    return site


def test_listing_warns_about_unusable_plugins_and_lists_the_rest(fake_plugins, capsys):
    code, out, err = run_cli(["scorers"], capsys)
    assert code == 0
    names = {line.split()[0] for line in out.splitlines()[1:]}
    assert {"activation", "attribution", "magnitude", "nan_scores", "wrong_shape"} <= names
    assert not names & {"broken", "not_a_scorer", "random"}
    assert "scorer 'broken' from fake-plugins 1.0 failed to import (ModuleNotFoundError" in err
    assert "'not_a_scorer' from fake-plugins is fake_plugin_module:helper, which is not a" in err
    assert "scorer name 'random' is claimed by several installed distributions:" in err
    assert "fake-plugins (fake_plugin_module:NaNScorer)" in err
    assert "lightning-prune (lightning_prune.scorers.random:RandomScorer)" in err


def _fit_free(bert_dir, glue_dir, out, scorer):
    return fit_free_args(bert_dir, glue_dir, out, "--scorer", scorer, "--scorer_options", "{}")


def test_a_broken_plugin_does_not_break_other_scorers(fake_plugins, bert_dir, glue_dir, tmp_path):
    main(_fit_free(bert_dir, glue_dir, tmp_path / "run", "magnitude"))
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["scorer"] == "magnitude"


@pytest.mark.parametrize(
    ("scorer", "message"),
    [
        ("broken", "scorer 'broken' from fake-plugins 1.0 failed to import"),
        ("random", "scorer name 'random' is claimed by several installed distributions"),
        ("not_a_scorer", "not a lightning_prune.scorers.NeuronScorer subclass"),
        ("nan_scores", "scorer 'nan_scores' returned 48 NaN/inf scores for encoder.layer.0; nothing was pruned"),
        ("wrong_shape", "scorer 'wrong_shape' returned shape (49,) for encoder.layer.0, which has 48 neurons"),
    ],
)
def test_a_chosen_bad_plugin_fails_clearly_before_pruning(
    fake_plugins, bert_dir, glue_dir, tmp_path, capsys, scorer, message
):
    out = tmp_path / "run"
    code, _, err = run_cli(_fit_free(bert_dir, glue_dir, out, scorer), capsys)
    assert code == 2 and message in err, err
    assert not out.exists()
