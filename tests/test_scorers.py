from __future__ import annotations

import dataclasses

import pytest
import torch
from lightning import Trainer
from torch.utils.data import DataLoader

from lightning_prune import load_model
from lightning_prune.errors import UsageError
from lightning_prune.modules import ScoringModule
from lightning_prune.scorers import check_scores, create_scorer, scorer_infos
from lightning_prune.scorers.attribution import AttributionScorer
from lightning_prune.tasks import TASKS, load_split

BUILT_INS = {"attribution", "activation", "magnitude", "random", "wanda"}


def _examples(glue_dir, task="sst2", split="validation", count=8):
    return load_split(TASKS[task], split, glue_dir)[:count]


def _probability(model, batch, layer, alpha: float) -> torch.Tensor:
    with torch.no_grad(), model.hook_activations([layer], lambda _layer, a: a * alpha):
        return model.target_log_prob(batch, batch["labels"]).exp()


@pytest.mark.parametrize("task", ["sst2", "stsb"])
def test_integrated_gradients_completeness(model_dir, glue_dir, task):
    """Summed over neurons and tokens, IG attributions approach f(x) - f(baseline) as steps grow."""
    model = load_model(model_dir, TASKS[task])
    batch = model.collate(_examples(glue_dir, task))
    heads = model.attention_layers()  # none for T5 (its heads cannot be removed)
    for layer in (model.ffn_layers()[0], model.ffn_layers()[-1], *heads[:1]):
        full, baseline = _probability(model, batch, layer, 1.0), _probability(model, batch, layer, 0.0)
        gap = full - baseline
        errors = []
        for steps in (4, 128):
            total = AttributionScorer(steps=steps, steps_per_pass=32).per_example(model, batch, layer).sum(1)
            errors.append(float((total.double() - gap.double()).abs().max()))
        noise = 1e-5 * float(torch.maximum(full.abs(), baseline.abs()).max())  # float32 rounding of f
        assert errors[1] <= 1e-2 * float(gap.abs().max()) + noise, (layer.name, errors, gap)
        assert errors[1] <= max(errors[0], noise), (layer.name, errors)


def test_joint_mode_completeness_over_all_layers(model_dir, glue_dir):
    """Joint IG: all layers' activations (FFN neurons and head outputs) scaled together; attributions of every
    layer sum to the gap."""
    model = load_model(model_dir, TASKS["sst2"])
    batch = model.collate(_examples(glue_dir))
    layers = model.unit_layers(heads=True)
    clean = {}
    with torch.no_grad(), model.hook_activations(layers, lambda layer, a: clean.setdefault(layer.name, a) * 1.0):
        full = model.target_log_prob(batch, batch["labels"]).exp()
    with torch.no_grad(), model.hook_activations(layers, lambda layer, a: clean[layer.name] * 0.0):
        baseline = model.target_log_prob(batch, batch["labels"]).exp()
    per_layer = AttributionScorer(steps=128, steps_per_pass=32, mode="joint").joint_per_example(model, batch, layers)
    total = sum(a.sum(1) for a in per_layer)
    noise = 1e-5 * float(torch.maximum(full.abs(), baseline.abs()).max())
    assert float((total - (full - baseline)).abs().max()) <= 1e-2 * float((full - baseline).abs().max()) + noise


def test_prefix_reuse_gives_the_same_attributions(bert_dir, glue_dir):
    model = load_model(bert_dir, TASKS["sst2"])
    batch = model.collate(_examples(glue_dir))
    scorer = AttributionScorer(steps=6)
    block_inputs = model.block_inputs(batch)
    assert block_inputs is not None and len(block_inputs) == len(model.ffn_layers())
    for layer in model.unit_layers(heads=True):
        reused = scorer.per_example(model, batch, layer, block_inputs)
        torch.testing.assert_close(reused, scorer.per_example(model, batch, layer), rtol=1e-4, atol=1e-8)


def test_step_chunking_does_not_change_attributions(bert_dir, glue_dir):
    model = load_model(bert_dir, TASKS["sst2"])
    batch = model.collate(_examples(glue_dir))
    layer = model.ffn_layers()[1]
    whole = AttributionScorer(steps=12, steps_per_pass=12).per_example(model, batch, layer)
    chunked = AttributionScorer(steps=12, steps_per_pass=5).per_example(model, batch, layer)
    torch.testing.assert_close(whole, chunked, rtol=1e-5, atol=1e-7)


def test_examples_weigh_by_their_content_tokens(model_dir, glue_dir):
    """Default: each example's |attribution| times its own text's token count (``example_tokens``), the same
    weight in every layer (T5's decoder layers too); ``uniform``: each example once."""
    model = load_model(model_dir, TASKS["sst2"])
    batch = model.collate(_examples(glue_dir))
    scorer = AttributionScorer(steps=4)
    weighted = scorer(model, batch)
    uniform = AttributionScorer(steps=4, example_weight="uniform")(model, batch)
    input_side = model.ffn_layers()[0].side
    tokens = model.example_tokens(batch)
    # Sentences of different lengths; [CLS]/[SEP], </s> or a decoder LM's prompt template are not the example's.
    assert tokens.unique().numel() > 1 and bool((tokens < batch["attention_mask"].sum(1)).all())
    if input_side == "encoder":
        torch.testing.assert_close(tokens, model.content_mask(batch, input_side, batch["labels"]).sum(1))
    for layer, by_tokens, by_example in zip(model.ffn_layers(), weighted, uniform, strict=True):
        attributions = scorer.per_example(model, batch, layer).abs()
        torch.testing.assert_close(by_tokens, (attributions * tokens.unsqueeze(1)).sum(0), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(by_example, attributions.sum(0), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted(BUILT_INS))
def test_scores_have_layer_shapes(model_dir, glue_dir, name):
    model = load_model(model_dir, TASKS["sst2"])
    scorer = create_scorer(name, {"steps": 3} if name == "attribution" else None)
    batch = model.collate(_examples(glue_dir)) if scorer.needs_data else None
    scores = check_scores(name, scorer(model, batch), model.ffn_layers())
    assert [s.shape[0] for s in scores] == [layer.size for layer in model.ffn_layers()]


@pytest.mark.parametrize("name", ["attribution", "activation"])
def test_data_scorers_respond_to_data(bert_dir, glue_dir, name):
    model = load_model(bert_dir, TASKS["sst2"])
    scorer = create_scorer(name, {"steps": 3} if name == "attribution" else None)
    examples = _examples(glue_dir, count=16)
    first = scorer(model, model.collate(examples[:8]))
    second = scorer(model, model.collate(examples[8:]))
    assert not torch.allclose(first[0], second[0])


def test_attribution_is_additive_over_batches(bert_dir, glue_dir):
    model = load_model(bert_dir, TASKS["sst2"])
    scorer = AttributionScorer(steps=4)
    examples = _examples(glue_dir, count=8)
    whole = scorer(model, model.collate(examples))
    first, second = (scorer(model, model.collate(part)) for part in (examples[:4], examples[4:]))
    halves = [a + b for a, b in zip(first, second, strict=True)]
    for w, h in zip(whole, halves, strict=True):
        torch.testing.assert_close(w, h, rtol=1e-4, atol=1e-6)


def test_random_is_seeded_and_magnitude_follows_weights(bert_dir):
    model = load_model(bert_dir, TASKS["sst2"])
    assert torch.equal(
        create_scorer("random", {"seed": 5})(model, None)[0], create_scorer("random", {"seed": 5})(model, None)[0]
    )
    assert not torch.equal(
        create_scorer("random", {"seed": 5})(model, None)[0], create_scorer("random", {"seed": 6})(model, None)[0]
    )
    before = create_scorer("magnitude")(model, None)[0].clone()
    with torch.no_grad():
        model.ffn_layers()[0].down_proj.weight[:, 3] *= 10
    after = create_scorer("magnitude")(model, None)[0]
    assert after[3] > before[3] and torch.equal(after[:3], before[:3])


def _score(model, scorer, examples, labels):
    module = ScoringModule(model, scorer, "attribution", labels)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, inference_mode=False, enable_progress_bar=False)
    trainer.predict(
        module, dataloaders=DataLoader(examples, batch_size=3, collate_fn=module.collate), return_predictions=False
    )
    return module.scores, int(module.examples_seen)


def test_unsupervised_differs_from_supervised_only_through_labels(bert_dir, glue_dir):
    model = load_model(bert_dir, TASKS["sst2"])
    examples = _examples(glue_dir, count=7)
    with torch.no_grad():
        predictions = model.predict(model.collate(examples)).tolist()
    assert predictions != [e.label for e in examples]  # otherwise the test could not tell the two apart
    relabeled = [dataclasses.replace(e, label=p) for e, p in zip(examples, predictions, strict=True)]
    scorer = AttributionScorer(steps=3, aggregate="sum")  # abs_sum cannot tell binary labels apart (see next test)
    pseudo, count = _score(model, scorer, examples, "pseudo")
    gold_on_predictions, _ = _score(model, scorer, relabeled, "gold")
    gold, _ = _score(model, scorer, examples, "gold")
    assert count == 7
    for p, g in zip(pseudo, gold_on_predictions, strict=True):
        torch.testing.assert_close(p, g, rtol=1e-6, atol=1e-9)
    assert not torch.allclose(pseudo[0], gold[0])


def test_abs_sum_makes_binary_labels_irrelevant(bert_dir, glue_dir):
    """p(wrong) = 1 - p(right) for two classes, so per-example attributions only flip sign."""
    model = load_model(bert_dir, TASKS["sst2"])
    batch = model.collate(_examples(glue_dir))
    flipped = {**batch, "labels": 1 - batch["labels"]}
    for aggregate, same in (("abs_sum", True), ("sum", False)):
        scorer = AttributionScorer(steps=3, aggregate=aggregate)
        a, b = scorer(model, batch)[0], scorer(model, flipped)[0]
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-9) is same


def test_built_ins_come_from_entry_points():
    infos = scorer_infos()
    assert set(infos) >= BUILT_INS
    for name in BUILT_INS:
        assert infos[name].distribution == "lightning-prune"
        assert infos[name].entry_point.group == "lightning_prune.scorers"


def test_unknown_scorer_and_options_are_refused():
    with pytest.raises(UsageError, match=r"unknown scorer 'fisher2'.*attribution"):
        create_scorer("fisher2")
    with pytest.raises(
        UsageError,
        match="has no option stpes: its options are steps, aggregate, steps_per_pass, mode, reuse_prefix, example_",
    ):
        create_scorer("attribution", {"stpes": 3})
    with pytest.raises(UsageError, match="mode must be 'exact' or 'joint'"):
        create_scorer("attribution", {"mode": "fast"})
    with pytest.raises(UsageError, match="example_weight must be 'tokens' or 'uniform'"):
        create_scorer("attribution", {"example_weight": "words"})


@pytest.mark.parametrize(
    ("scores", "message"),
    [
        ([torch.ones(48)], "returned 1 score tensors for 2 FFN layers"),
        ([torch.ones(48), torch.ones(47)], "returned shape"),
        ([torch.ones(48), torch.full((48,), float("nan"))], "NaN/inf"),
        ([torch.ones(48), torch.ones(48, dtype=torch.long)], "must be float"),
    ],
)
def test_bad_scores_are_refused_naming_the_scorer(bert_dir, scores, message):
    model = load_model(bert_dir, TASKS["sst2"])
    with pytest.raises(UsageError, match=f"scorer 'plug'.*{message}"):
        check_scores("plug", scores, model.ffn_layers())


@pytest.mark.parametrize(("fixture", "name"), [("bert_dir", "attribution"), ("llama_dir", "attribution"),
                                              ("llama_dir", "wanda"), ("llama_dir", "activation"),
                                              ("llama_dir", "fisher")])  # fmt: skip
def test_refit_aware_scoring_weighs_what_residuals_give(request, glue_dir, fixture, name):
    """Every scorer that declares ``scores_residuals`` weighs neurons through ``weighed_activations`` only, never
    changing what the model computes: residuals that return the activations give the plain scores; residuals of
    twice the activations double the scores of activation (linear in them) and quadruple Wanda's, Fisher's and,
    with head groups scored too (its ``auto`` aggregate sums squares then), attribution's; head groups, which have
    no residuals, score as before."""
    model = load_model(request.getfixturevalue(fixture), TASKS["sst2"])
    batch = model.collate(_examples(glue_dir))
    scorer = create_scorer(name, {"steps": 3} if name == "attribution" else None)
    assert scorer.scores_residuals
    layers = model.unit_layers(heads=model.attention_layers() != [])
    plain = scorer.score_units(model, batch, layers)
    ffn = len(model.ffn_layers())
    for residual, factor in (
        (lambda a: a, 1.0),
        (lambda a: 2 * a, 2.0 if name == "activation" else 4.0),
    ):
        refit_aware = scorer.with_residuals({layer.name: residual for layer in model.ffn_layers()})
        assert scorer.residuals is None  # the run's scorer stays as it is
        for index, (got, want) in enumerate(zip(refit_aware.score_units(model, batch, layers), plain, strict=True)):
            torch.testing.assert_close(got, want * (factor if index < ffn else 1.0), rtol=1e-4, atol=1e-7)
