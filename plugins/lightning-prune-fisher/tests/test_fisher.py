from __future__ import annotations

import json

import pytest
import torch
from lightning_prune_fisher import FisherScorer

from lightning_prune import load_model
from lightning_prune.cli import main
from lightning_prune.scorers import create_scorer, scorer_infos
from lightning_prune.tasks import TASKS, load_split
from lightning_prune.testing import build_bert_with_heads, build_t5, write_glue_dir


@pytest.fixture(scope="module")
def glue(tmp_path_factory):
    return write_glue_dir(tmp_path_factory.mktemp("glue"))


@pytest.fixture(scope="module", params=["bert", "t5_gated"])
def model_dir(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    return build_bert_with_heads(folder) if request.param == "bert" else build_t5(folder, gated=True)


def test_registered_through_its_own_distribution():
    infos = scorer_infos()
    assert infos["fisher"].distribution == "lightning-prune-fisher"
    assert isinstance(create_scorer("fisher"), FisherScorer)


def test_batch_scores_are_sums_of_per_example_squared_gradients(model_dir, glue):
    model = load_model(model_dir, TASKS["sst2"])
    examples = load_split(TASKS["sst2"], "validation", glue)[:5]
    scorer = FisherScorer()
    batched = scorer(model, model.collate(examples))
    singles = [scorer(model, model.collate([e])) for e in examples]
    for layer_index, total in enumerate(batched):
        expected = sum(s[layer_index] for s in singles)
        torch.testing.assert_close(total, expected, rtol=1e-4, atol=1e-10)
        assert (total >= 0).all()


def test_single_example_matches_a_hand_computed_gradient(glue, tmp_path):
    model = load_model(build_bert_with_heads(tmp_path / "bert"), TASKS["sst2"])
    example = load_split(TASKS["sst2"], "validation", glue)[:1]
    batch = model.collate(example)
    layer = model.ffn_layers()[1]
    mask = torch.ones(layer.size, requires_grad=True)
    with torch.enable_grad(), model.hook_activations([layer], lambda _layer, a: a * mask):
        loss = -model.target_log_prob(batch, batch["labels"]).sum()
        (gradient,) = torch.autograd.grad(loss, mask)
    torch.testing.assert_close(FisherScorer()(model, batch)[1], gradient.pow(2), rtol=1e-5, atol=1e-12)


def test_dead_neuron_scores_zero(glue, tmp_path):
    model = load_model(build_bert_with_heads(tmp_path / "bert"), TASKS["sst2"])
    layer = model.ffn_layers()[0]
    with torch.no_grad():  # neuron 5 outputs gelu(0) = 0 for every token
        layer.up_projs[0].weight[5].zero_()
        layer.up_projs[0].bias[5] = 0.0
    scores = FisherScorer()(model, model.collate(load_split(TASKS["sst2"], "validation", glue)[:4]))
    assert scores[0][5] == 0 and scores[0].sum() > 0


def test_fit_free_with_the_plugin(glue, tmp_path):
    model_dir = build_bert_with_heads(tmp_path / "bert")
    out = tmp_path / "run"
    main(
        [
            "fit-free",
            "--model.path",
            str(model_dir),
            "--data.task",
            "sst2",
            "--data.data_dir",
            str(glue),
            "--scorer",
            "fisher",
            "--sparsity",
            "0.25",
            "--output_dir",
            str(out),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["scorer"] == "fisher" and metrics["examples_scored"] == 48
    assert all(v == {"dense": 48, "kept": 36} for v in metrics["ffn_neurons"].values())
