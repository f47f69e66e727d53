"""Attention heads: head-group scores, their removal (BERT; grouped-query decoders), saving and loading (plain
Hugging Face loading where a config can describe the pruned heads), and ``--target_speedup``: FLOP accounting,
the budget's selection and its bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import fit_free_args, one_error_line, run_cli
from lightning_prune import load_pruned_model
from lightning_prune.adapters import load_model
from lightning_prune.export import save_model_folder
from lightning_prune.pruning import prune_model, restore_units, snapshot_units
from lightning_prune.pruning.budget import count_flops, unit_costs
from lightning_prune.pruning.keep import keep_for_flops
from lightning_prune.scorers import create_scorer
from lightning_prune.tasks import TASKS, get_task, load_split

SPEEDUP = ["--sparsity", "null", "--target_speedup", "1.3"]


def _batch(model, glue_dir: Path, count: int = 6):
    return model.collate(load_split(get_task("sst2"), "validation", glue_dir)[:count])


def _kept(model) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every FFN layer without its first neuron; every attention layer without its first head group."""
    ffn = [torch.arange(1, layer.size) for layer in model.ffn_layers()]
    heads = [torch.arange(1, layer.size) for layer in model.attention_layers()]
    return ffn, heads


@pytest.mark.parametrize("fixture", ["bert_dir", "llama_dir"])
def test_removing_a_head_group_equals_silencing_it(request, glue_dir, fixture):
    """Slicing a head group out of the projections gives the model whose group's outputs are zeroed."""
    model = load_model(request.getfixturevalue(fixture), TASKS["sst2"])
    batch = _batch(model, glue_dir)
    layers = model.attention_layers()
    before = [layer.size for layer in layers]
    assert layers and min(before) >= 2

    def silence(layer, activations):
        activations = activations.clone()
        activations[..., : layer.columns_per_unit] = 0.0
        return activations

    with torch.no_grad(), model.hook_activations(layers, silence):
        silenced = model.target_log_prob(batch, batch["labels"])
    dense = snapshot_units(model)
    prune_model(model, [torch.arange(layer.size) for layer in model.ffn_layers()], None, _kept(model)[1])
    assert [layer.size for layer in model.attention_layers()] == [size - 1 for size in before]
    with torch.no_grad():
        torch.testing.assert_close(model.target_log_prob(batch, batch["labels"]), silenced, atol=1e-5, rtol=1e-5)
    restore_units(model, dense)
    assert [layer.size for layer in model.attention_layers()] == before


@pytest.mark.parametrize("fixture", ["bert_dir", "llama_dir"])
def test_unit_costs_are_what_the_flop_counter_counts(request, glue_dir, fixture):
    """Removing units lowers the counted FLOPs by exactly their priced cost (FFN neurons and head groups)."""
    model = load_model(request.getfixturevalue(fixture), TASKS["sst2"])
    batches = [_batch(model, glue_dir, 4), _batch(model, glue_dir, 7)]
    layers = model.unit_layers(heads=True)
    costs = unit_costs(model, batches, layers)
    prunable = sum(cost * size for cost, size in zip(costs.per_unit, costs.sizes, strict=True))
    assert costs.total == count_flops(model, batches) and 0 < prunable < costs.total
    ffn, heads = _kept(model)
    prune_model(model, ffn, None, heads)
    removed = sum(
        cost * (size - len(kept)) for cost, size, kept in zip(costs.per_unit, costs.sizes, [*ffn, *heads], strict=True)
    )
    assert count_flops(model, batches) == pytest.approx(costs.total - removed, rel=1e-9)


def test_every_builtin_scorer_scores_head_groups_without_changing_neuron_scores(llama_dir, glue_dir):
    model = load_model(llama_dir, TASKS["sst2"])
    batch = _batch(model, glue_dir)
    layers = model.unit_layers(heads=True)
    for name, options in [
        ("attribution", {"steps": 2}), ("attribution", {"steps": 2, "mode": "joint"}), ("activation", {}),
        ("wanda", {}), ("magnitude", {}), ("random", {}), ("fisher", {}),
    ]:  # fmt: skip
        scorer = create_scorer(name, options)
        assert scorer.scores_heads
        # attribution's default aggregate sums squares when heads are scored: its FFN-only scores in squares match
        alone = create_scorer(name, {**options, "aggregate": "square_sum"}) if name == "attribution" else scorer
        with torch.enable_grad():
            scores = scorer.score_units(model, None if name in ("magnitude", "random") else batch, layers)
            neurons = alone(model, None if name in ("magnitude", "random") else batch)
        assert [tuple(s.shape) for s in scores] == [(layer.size,) for layer in layers], name
        assert all(bool(torch.isfinite(s).all()) for s in scores), name
        if name != "attribution" or options.get("mode") != "joint":  # joint IG: one path through every unit
            for mine, alone in zip(scores, neurons, strict=False):
                torch.testing.assert_close(mine, alone, rtol=1e-5, atol=1e-9)


def test_flop_budget_selection():
    scores = [torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([5.0, 0.1])]
    costs, floors, kinds = [1.0, 10.0], [1, 1], ["ffn", "attention"]
    # global: lowest score per FLOP first: head 1 (0.01/FLOP) goes before any neuron
    kept = keep_for_flops(scores, costs, 10.0, "global", floors, kinds)
    assert [k.tolist() for k in kept] == [[0, 1, 2, 3], [0]]
    kept = keep_for_flops(scores, costs, 12.0, "global", floors, kinds)
    assert [k.tolist() for k in kept] == [[2, 3], [0]]
    # layer: FFN layers lose the same fraction, attention layers the same number of heads; the highest kept score
    kept = keep_for_flops(scores, costs, 2.0, "layer", floors, kinds)
    assert [k.tolist() for k in kept] == [[0, 1, 2, 3], [0]]  # the worthless head beats two neurons
    kept = keep_for_flops([scores[0], torch.tensor([5.0, 4.0])], costs, 2.0, "layer", floors, kinds)
    assert [k.tolist() for k in kept] == [[2, 3], [0, 1]]  # a useful head: two neurons go instead
    assert keep_for_flops(scores, costs, 14.0, "global", floors, kinds) is None  # floors leave 13 removable


def test_target_speedup_on_bert_removes_heads_and_saves_a_loadable_model(bert_dir, glue_dir, tmp_path, capsys, caplog):
    code, out, err = run_cli(fit_free_args(bert_dir, glue_dir, tmp_path / "run", *SPEEDUP, "--scope", "global"), capsys)
    assert code == 0, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["flops"]["speedup"] >= 1.3 and metrics["target_speedup"] == 1.3
    assert "fewer FLOPs (target 1.3)" in out + err + caplog.text
    heads = metrics["attention_heads"]
    assert sum(v["kept"] for v in heads.values()) < sum(v["dense"] for v in heads.values())
    layout = metrics["saved_models"]["model"]
    assert not layout["plain_hf_loadable"] and layout["heads"] == "per-layer"  # BERT's config cannot say it
    folder = tmp_path / "run" / "model"
    plan = json.loads((folder / "pruning_plan.json").read_text())
    assert [len(entry["kept"]) for entry in plan["attention"]] == [v["kept"] for v in heads.values()]
    pruned = load_pruned_model(str(folder), "sst2")
    assert [layer.num_heads for layer in pruned.attention_layers()] == [v["kept"] for v in heads.values()]
    assert count_flops(pruned, [_batch(pruned, glue_dir)]) < count_flops(
        load_model(bert_dir, TASKS["sst2"]), [_batch(pruned, glue_dir)]
    )

    from transformers import AutoModel

    code, _, err = run_cli(
        fit_free_args(
            bert_dir, glue_dir, tmp_path / "padded", *SPEEDUP, "--scope", "global", "--pad_uneven_ffn", "true"
        ),
        capsys,
    )
    assert code == 0, err
    padded_folder = tmp_path / "padded" / "model"
    layout = json.loads((tmp_path / "padded" / "metrics.json").read_text())["saved_models"]["model"]
    assert layout["plain_hf_loadable"] and layout["heads"] == "padded"
    ours = load_pruned_model(str(padded_folder), "sst2")
    batch = _batch(ours, glue_dir)
    plain = AutoModel.from_pretrained(str(padded_folder), dtype=torch.float32).eval()
    inputs = {name: batch[name] for name in ours.input_names}
    with torch.no_grad():
        torch.testing.assert_close(
            plain(**inputs).last_hidden_state, ours.weights_module(**inputs).last_hidden_state, atol=1e-5, rtol=1e-5
        )
    save_model_folder(ours, tmp_path / "again")  # unpadded now: the old padding must not reach the new plan
    assert "padded_heads" not in json.loads((tmp_path / "again" / "pruning_plan.json").read_text())
    again = load_pruned_model(str(tmp_path / "again"), "sst2")
    with torch.no_grad():
        torch.testing.assert_close(
            again.weights_module(**inputs).last_hidden_state, ours.weights_module(**inputs).last_hidden_state
        )


def test_target_speedup_on_a_grouped_query_decoder_loads_with_plain_transformers(llama_dir, glue_dir, tmp_path, capsys):
    """Layer scope keeps the same head groups count in every layer: the config says it, plain loading works."""
    from transformers import AutoModelForCausalLM

    args = fit_free_args(llama_dir, glue_dir, tmp_path / "run", "--target_speedup", "1.6", "--sparsity", "null")
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["flops"]["speedup"] >= 1.6
    folder = tmp_path / "run" / "model"
    layout = metrics["saved_models"]["model"]
    assert layout["plain_hf_loadable"], layout
    config = json.loads((folder / "config.json").read_text())
    kept = {v["kept"] for v in metrics["attention_heads"].values()}
    assert len(kept) == 1 and config["num_attention_heads"] == kept.pop()
    assert config["num_attention_heads"] == 2 * config["num_key_value_heads"] and config["head_dim"] == 8
    ours = load_pruned_model(str(folder), "sst2")
    batch = _batch(ours, glue_dir)
    plain = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        mine = ours.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        theirs = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(theirs, mine, atol=1e-5, rtol=1e-5)


def test_a_sweep_over_flop_targets_chooses_by_max_drop_and_saves_each(llama_dir, glue_dir, tmp_path, capsys, caplog):
    """``--target_speedup 1.2,1.5`` scores once and prunes for each budget; ``max_drop`` chooses among them as
    among sparsities (a drop of 1 admits every point: the highest target is chosen)."""
    targets = ["--sparsity", "null", "--target_speedup", "1.5,1.2", "--max_drop", "1", "--save_models", "all"]
    targets += ["--data.num_examples", "16", "--data.selection_examples", "24"]
    code, out, err = run_cli(fit_free_args(llama_dir, glue_dir, tmp_path / "run", *targets), capsys)
    assert code == 0, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [point["target_speedup"] for point in metrics["sweep"]] == [1.2, 1.5]
    assert all(point["flop_speedup"] >= point["target_speedup"] for point in metrics["sweep"])
    assert metrics["sweep"][0]["parameters"] > metrics["sweep"][1]["parameters"]
    assert metrics["target_speedup"] == 1.5 and metrics["selection"]["chosen_target_speedup"] == 1.5
    assert metrics["flops"]["speedup"] == metrics["sweep"][1]["flop_speedup"]
    assert set(metrics["saved_models"]) == {"model", "model-1.2x", "model-1.5x"}
    assert "target 1.2x (FFN sparsity" in out + err + caplog.text
    header = (tmp_path / "run" / "sweep.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["sparsity", "target_speedup", "flop_speedup", "parameters"]
    assert "**1.5x**" in (tmp_path / "run" / "sweep.md").read_text()
    kept = [
        load_pruned_model(str(tmp_path / "run" / name), "sst2").num_parameters() for name in ("model-1.5x", "model")
    ]
    assert kept[0] == kept[1] == metrics["parameters"]["pruned"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--target_speedup", "1.0", "--sparsity", "null"], "target_speedup 1.0 is not above 1"),
        (["--target_speedup", "1.5"], "both sparsity (0.5) and target_speedup (1.5) are given"),
        (["--target_speedup", "40", "--sparsity", "null"], "target_speedup 40 is out of reach"),
        (["--target_speedup", "1.2,0.9", "--sparsity", "null"], "target_speedup 0.9 is not above 1"),
        (["--target_speedup", "1.2,40", "--sparsity", "null"], "target_speedup 40 is out of reach"),
    ],
)
def test_bad_budgets_fail_with_one_line_before_the_work(bert_dir, glue_dir, tmp_path, capsys, extra, message):
    code, _, err = run_cli(fit_free_args(bert_dir, glue_dir, tmp_path / "run", *extra), capsys)
    assert code == 2 and message in one_error_line(err)
    assert not (tmp_path / "run").exists()


def test_t5_heads_are_refused_but_its_neurons_meet_a_budget(t5_dir, glue_dir, tmp_path, capsys):
    code, _, err = run_cli(fit_free_args(t5_dir, glue_dir, tmp_path / "run", *SPEEDUP), capsys)
    assert code == 2 and "cannot lose attention heads" in one_error_line(err)
    assert not (tmp_path / "run").exists()
    neurons_only = [*SPEEDUP, "--target_speedup", "1.15", "--heads", "false"]
    code, _, err = run_cli(fit_free_args(t5_dir, glue_dir, tmp_path / "run", *neurons_only), capsys)
    assert code == 0, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["flops"]["speedup"] >= 1.15 and "attention_heads" not in metrics


def test_one_key_value_head_is_never_removed_the_budget_goes_to_the_ffn(glue_dir, tmp_path, capsys):
    """Gemma 3 270M's layers have 1 key/value head shared by 4 query heads: one head group, the floor every
    attention layer keeps. A FLOP budget is met by FFN neurons alone and the saved folder loads plainly."""
    from transformers import AutoModelForCausalLM

    from lightning_prune.testing import build_causal_lm

    folder = build_causal_lm(tmp_path / "gemma", "gemma3_text", key_value_heads=1)
    args = fit_free_args(folder, glue_dir, tmp_path / "run", *SPEEDUP)
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["flops"]["speedup"] >= 1.3
    assert {v["kept"] for v in metrics["attention_heads"].values()} == {4}
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 1)
    assert config["intermediate_size"] < 48
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "run" / "model"), dtype=torch.float32).eval()
    ours = load_pruned_model(str(tmp_path / "run" / "model"), "sst2")
    batch = _batch(ours, glue_dir)
    with torch.no_grad():
        mine = ours.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        theirs = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(theirs, mine, atol=1e-5, rtol=1e-5)


def test_attribution_rates_a_head_group_by_its_columns_magnitudes(bert_dir, glue_dir):
    """Each column of a head group's output is attributed as a neuron is; with ``abs_sum`` the group's score sums
    their magnitudes (weighed by the example's tokens)."""
    model = load_model(bert_dir, TASKS["sst2"])
    batch = _batch(model, glue_dir)
    scorer = create_scorer("attribution", {"steps": 4, "aggregate": "abs_sum"})
    layer = model.attention_layers()[0]
    columns = scorer.per_example(model, batch, layer)
    assert columns.shape == (6, layer.size * layer.columns_per_unit)
    weights = model.example_tokens(batch).to(columns.dtype).unsqueeze(1)
    expected = layer.per_unit((columns.abs() * weights).sum(0))
    [score] = scorer.score_units(model, batch, [layer])
    torch.testing.assert_close(score, expected)
    assert bool((score >= layer.per_unit(columns).abs().mul(weights).sum(0) - 1e-9).all())


def test_attribution_square_sum_squares_each_groups_effect_per_example(bert_dir, glue_dir):
    """``square_sum``: per example, a head group's signed column attributions summed (its own removal effect),
    then squared: effects of independent sign add up in squares, so units of different sizes compare alike. The
    default (``auto``) squares when head groups are scored, and sums magnitudes for FFN neurons alone."""
    model = load_model(bert_dir, TASKS["sst2"])
    batch = _batch(model, glue_dir)
    scorer = create_scorer("attribution", {"steps": 4, "aggregate": "square_sum"})
    layer = model.attention_layers()[0]
    columns = scorer.per_example(model, batch, layer)
    weights = model.example_tokens(batch).to(columns.dtype).unsqueeze(1)
    [score] = scorer.score_units(model, batch, [layer])
    torch.testing.assert_close(score, (layer.per_unit(columns).square() * weights).sum(0))
    ffn = model.ffn_layers()[0]
    neurons = scorer.per_example(model, batch, ffn)
    torch.testing.assert_close(scorer.score_units(model, batch, [ffn])[0], (neurons.square() * weights).sum(0))
    auto = create_scorer("attribution", {"steps": 4})
    assert auto.aggregate == "auto"
    both = auto.score_units(model, batch, [ffn, layer])
    torch.testing.assert_close(both[1], score)
    torch.testing.assert_close(both[0], (neurons.square() * weights).sum(0))
    torch.testing.assert_close(auto.score_units(model, batch, [ffn])[0], (neurons.abs() * weights).sum(0))
