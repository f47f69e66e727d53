from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor

from conftest import fit_free_args, run_cli
from lightning_prune import load_model
from lightning_prune.errors import UsageError
from lightning_prune.export import save_model_folder
from lightning_prune.pruning import (
    PLAN_FILE,
    ActivationStatistics,
    Repair,
    activation_statistics,
    keep_neurons,
    prune_model,
    slice_ffn,
)
from lightning_prune.pruning.keep import round_widths
from lightning_prune.pruning.repair import GRAM_DTYPE
from lightning_prune.scorers import create_scorer
from lightning_prune.tasks import TASKS, load_split


def _batch(model, glue_dir, task="sst2", count=6):
    return model.collate(load_split(TASKS[task], "validation", glue_dir)[:count])


def _outputs(model, batch):
    with torch.no_grad():
        return model.target_log_prob(batch, batch["labels"]), model.predict(batch)


@pytest.mark.parametrize("task", ["sst2", "stsb"])
def test_sparsity_zero_keeps_outputs_identical(model_dir, glue_dir, task):
    model = load_model(model_dir, TASKS[task])
    batch = _batch(model, glue_dir, task)
    before = _outputs(model, batch)
    scores = create_scorer("magnitude")(model, None)
    prune_model(model, keep_neurons(scores, 0.0))
    after = _outputs(model, batch)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


def test_sliced_model_equals_masked_model(model_dir, glue_dir):
    model = load_model(model_dir, TASKS["sst2"])
    batch = _batch(model, glue_dir)
    kept = keep_neurons(create_scorer("random", {"seed": 1})(model, None), 0.6)
    layers = model.ffn_layers()
    masks = {layer.name: torch.zeros(layer.size).index_fill(0, k, 1.0) for layer, k in zip(layers, kept, strict=True)}
    with model.hook_activations(model.ffn_layers(), lambda layer, a: a * masks[layer.name]):
        masked = _outputs(model, batch)
    prune_model(model, kept)
    assert [layer.size for layer in model.ffn_layers()] == [len(k) for k in kept]
    sliced = _outputs(model, batch)
    torch.testing.assert_close(sliced[0], masked[0], rtol=1e-5, atol=1e-6)
    assert torch.equal(sliced[1], masked[1])


def test_gated_t5_slices_both_up_projections(t5_gated_dir):
    model = load_model(t5_gated_dir, TASKS["sst2"])
    layer = model.ffn_layers()[0]
    assert layer.up == ("wi_0", "wi_1")
    prune_model(model, keep_neurons(create_scorer("magnitude")(model, None), 0.5))
    assert [p.out_features for p in layer.up_projs] == [20, 20] and layer.down_proj.in_features == 20


def test_t5_covers_encoder_and_decoder(t5_dir):
    sides = [layer.side for layer in load_model(t5_dir, TASKS["sst2"]).ffn_layers()]
    assert sides == ["encoder", "encoder", "decoder", "decoder"]


def test_save_load_round_trip(model_dir, glue_dir, tmp_path):
    model = load_model(model_dir, TASKS["sst2"])
    batch = _batch(model, glue_dir)
    prune_model(model, keep_neurons(create_scorer("random")(model, None), 0.7, scope="global"))
    save_model_folder(model, tmp_path)
    loaded = load_model(tmp_path, TASKS["sst2"])
    assert [layer.size for layer in loaded.ffn_layers()] == [layer.size for layer in model.ffn_layers()]
    assert loaded.num_parameters() == model.num_parameters()
    expected, got = _outputs(model, batch), _outputs(loaded, batch)
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
    save_model_folder(loaded, tmp_path / "again")  # a loaded pruned model keeps its plan when saved unchanged
    again = _outputs(load_model(tmp_path / "again", TASKS["sst2"]), batch)
    assert torch.equal(expected[0], again[0]) and torch.equal(expected[1], again[1])


def test_plan_from_another_model_is_refused(bert_dir, t5_dir, tmp_path):
    t5 = load_model(t5_dir, TASKS["sst2"])
    bert = load_model(bert_dir, TASKS["sst2"])
    plan = prune_model(t5, keep_neurons(create_scorer("random")(t5, None), 0.5))
    save_model_folder(bert, tmp_path)
    (tmp_path / PLAN_FILE).write_text(json.dumps(plan))
    with pytest.raises(UsageError, match="plan belongs to another model"):
        load_model(tmp_path, TASKS["sst2"])


def test_layer_selection_keeps_top_scores_per_layer():
    scores = [torch.tensor([0.1, 0.9, 0.5, 0.3]), torch.tensor([4.0, 1.0, 2.0, 3.0])]
    kept = keep_neurons(scores, 0.5)
    assert [k.tolist() for k in kept] == [[1, 2], [0, 3]]


def test_global_selection_ranks_model_wide_with_a_floor():
    scores = [torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([4.0, 1.0, 2.0, 3.0])]
    kept = keep_neurons(scores, 0.5, scope="global", min_keep=1)
    assert [k.tolist() for k in kept] == [[3], [0, 2, 3]]  # layer 0 keeps only its floor


def test_rounded_widths_drop_the_lowest_kept_scores_and_respect_the_floor():
    scores = [torch.tensor([0.9, 0.1, 0.8, 0.7, 0.6, 0.5, 0.2]), torch.tensor([3.0, 2.0, 1.0, 0.5])]
    kept = [torch.tensor([0, 2, 3, 4, 5]), torch.tensor([0])]
    rounded = round_widths(scores, kept, 2, min_keep=1)
    assert [k.tolist() for k in rounded] == [[0, 2, 3, 4], [0, 1]]  # the floor of 1 grows to one multiple
    assert round_widths(scores, kept, 1) is kept


def test_ties_are_broken_by_index():
    kept = keep_neurons([torch.ones(6)], 0.5)
    assert kept[0].tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    ("sparsity", "scope", "min_keep"), [(1.0, "layer", 1), (-0.1, "layer", 1), (0.5, "row", 1), (0.5, "layer", 0)]
)
def test_bad_selection_settings(sparsity, scope, min_keep):
    with pytest.raises(UsageError):
        keep_neurons([torch.ones(4)], sparsity, scope, min_keep)


def _make_constant(model, neurons: list[torch.Tensor], values: list[torch.Tensor]) -> None:
    """Zero the up-projection rows of ``neurons`` and set their biases: each then fires ``act(value)`` everywhere."""
    with torch.no_grad():
        for layer, index, value in zip(model.ffn_layers(), neurons, values, strict=True):
            (up,) = layer.up_projs
            up.weight[index] = 0.0
            up.bias[index] = value


def test_bias_compensation_is_exact_for_constant_neurons(bert_dir, glue_dir):
    model = load_model(bert_dir, TASKS["sst2"])
    batch = _batch(model, glue_dir, count=12)
    generator = torch.Generator().manual_seed(0)
    removed = [torch.randperm(layer.size, generator=generator)[: layer.size // 2] for layer in model.ffn_layers()]
    _make_constant(model, removed, [torch.randn(len(r), generator=generator) for r in removed])
    dense = _outputs(model, batch)
    kept = [
        torch.tensor(sorted(set(range(layer.size)) - set(r.tolist())))
        for layer, r in zip(model.ffn_layers(), removed, strict=True)
    ]
    bias = activation_statistics(model, [batch]).repair("bias")
    plain = copy.deepcopy(model)
    prune_model(plain, kept)
    plan = prune_model(model, kept, bias)
    assert all(entry["reconstruction"] == ["bias"] for entry in plan["layers"])
    torch.testing.assert_close(_outputs(model, batch)[0], dense[0], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(_outputs(plain, batch)[0], dense[0], rtol=1e-4, atol=1e-5)  # the cut alone shifts


def test_activation_means_count_words_not_special_tokens(bert_dir, glue_dir):
    model = load_model(bert_dir, TASKS["sst2"])
    batch = _batch(model, glue_dir, count=8)
    content = model.content_mask(batch, "encoder", batch["labels"])
    special = set(model.tokenizer.all_special_ids)
    assert content.sum() == sum(
        1
        for t, m in zip(batch["input_ids"].flatten(), batch["attention_mask"].flatten(), strict=True)
        if m and int(t) not in special
    )
    captured = {}

    def record(layer, activations):
        captured[layer.name] = activations.detach()
        return activations

    with torch.no_grad(), model.hook_activations(model.ffn_layers(), record):
        model.target_log_prob(batch, batch["labels"])
    means = activation_statistics(model, [batch]).means()
    for layer, mean in zip(model.ffn_layers(), means, strict=True):
        expected = captured[layer.name][content].double().mean(0)
        torch.testing.assert_close(mean, expected)
        assert not torch.allclose(mean, captured[layer.name][batch["attention_mask"].bool()].double().mean(0))


def test_compensated_model_saves_and_loads(bert_dir, glue_dir, tmp_path):
    model = load_model(bert_dir, TASKS["sst2"])
    batch = _batch(model, glue_dir)
    kept = keep_neurons(create_scorer("random", {"seed": 2})(model, None), 0.5)
    prune_model(model, kept, activation_statistics(model, [batch]).repair("bias"))
    save_model_folder(model, tmp_path)
    expected, got = _outputs(model, batch), _outputs(load_model(tmp_path, TASKS["sst2"]), batch)
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])


def test_layers_without_a_down_bias_are_cut_plainly(t5_dir, glue_dir):
    model = load_model(t5_dir, TASKS["sst2"])
    batch = _batch(model, glue_dir)
    kept = keep_neurons(create_scorer("random")(model, None), 0.5)
    plan = prune_model(model, kept, activation_statistics(model, [batch]).repair("bias"))
    assert not any(entry["reconstruction"] for entry in plan["layers"])
    layer = model.ffn_layers()[0]
    with pytest.raises(ValueError, match="repaired down projection of shape"):
        slice_ffn(layer, torch.arange(layer.size // 2), (torch.zeros(layer.size, 3), None))


def _duplicate_neurons(model, generator) -> list[Tensor]:
    """Make half of every layer's neurons copies of the other half (same up/gate rows): the removed ones are then
    exactly linear in the kept ones. Returns the kept (original) neurons per layer."""
    kept = []
    with torch.no_grad():
        for layer in model.ffn_layers():
            order = torch.randperm(layer.size, generator=generator)
            keep, copies = order[: layer.size // 2].sort().values, order[layer.size // 2 :]
            sources = keep[torch.randint(len(keep), (len(copies),), generator=generator)]
            for up in layer.up_projs:
                up.weight[copies] = up.weight[sources]
                if up.bias is not None:
                    up.bias[copies] = up.bias[sources]
            kept.append(keep)
    return kept


@pytest.mark.parametrize("fixture", ["bert_dir", "llama_dir"])
def test_least_squares_reproduces_the_dense_layer_when_the_kept_neurons_span_the_removed(request, glue_dir, fixture):
    """λ → 0: the refit folds each removed copy into its source's column, exactly (with or without a down bias)."""
    model = load_model(request.getfixturevalue(fixture), TASKS["sst2"])
    batch = _batch(model, glue_dir, count=12)
    kept = _duplicate_neurons(model, torch.Generator().manual_seed(0))
    with torch.no_grad():
        dense = model.target_log_prob(batch, batch["labels"])
    statistics = activation_statistics(model, [batch], second_moments=True)
    plain = copy.deepcopy(model)
    prune_model(plain, kept)
    plan = prune_model(model, kept, statistics.repair("least_squares", damping=1e-10))
    assert all(entry["reconstruction"] == ["least_squares"] for entry in plan["layers"])
    with torch.no_grad():
        torch.testing.assert_close(model.target_log_prob(batch, batch["labels"]), dense, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(plain.target_log_prob(batch, batch["labels"]), dense, rtol=1e-4, atol=1e-4)


def test_least_squares_changes_nothing_when_nothing_is_pruned(llama_dir, glue_dir):
    model = load_model(llama_dir, TASKS["sst2"])
    batch = _batch(model, glue_dir, count=8)
    with torch.no_grad():
        dense = model.target_log_prob(batch, batch["labels"])
    statistics = activation_statistics(model, [batch], second_moments=True)
    kept = [torch.arange(layer.size) for layer in model.ffn_layers()]
    prune_model(model, kept, statistics.repair("least_squares"))
    with torch.no_grad():
        torch.testing.assert_close(model.target_log_prob(batch, batch["labels"]), dense)


def test_statistics_of_two_shards_add_up_to_one_run(llama_dir, glue_dir):
    """What the DDP all-reduce sums: two processes' statistics equal one process's over all batches."""
    model = load_model(llama_dir, TASKS["sst2"])
    examples = load_split(TASKS["sst2"], "validation", glue_dir)[:12]
    batches = [model.collate(examples[i : i + 4]) for i in range(0, 12, 4)]
    whole = activation_statistics(model, batches, second_moments=True)
    first, second = (activation_statistics(model, part, second_moments=True) for part in (batches[:1], batches[1:]))
    merged = ActivationStatistics(model.ffn_layers(), second_moments=True)
    # what each process holds, in the order ``reduce`` hands its sums over (means' sums, token and example counts,
    # then grams)
    held = zip(*([torch.cat([*shard.sums, shard.tokens, shard.examples]), *shard.grams] for shard in (first, second)),
               strict=True)  # fmt: skip
    merged.reduce(lambda part: part + sum(next(held)))
    merged_sums = [*merged.sums, merged.tokens, merged.examples, *merged.grams]
    whole_sums = [*whole.sums, whole.tokens, whole.examples, *whole.grams]
    for got, want in zip(merged_sums, whole_sums, strict=True):
        torch.testing.assert_close(got, want)
    assert int(merged.examples) == 12  # what metrics.json reports as calibration_examples


def test_float32_second_moment_sums_stay_within_1e5_of_float64_over_half_a_million_tokens():
    """The stated accuracy of ``GRAM_DTYPE``: heavy-tailed activations (1% spikes 20x the rest), 2,000 batches."""
    generator = torch.Generator().manual_seed(0)
    exact, summed = torch.zeros(64, 64, dtype=torch.float64), torch.zeros(64, 64, dtype=GRAM_DTYPE)
    for _ in range(2000):
        tokens = torch.randn(256, 64, generator=generator) * torch.linspace(0.01, 3, 64)
        tokens += 20 * (torch.rand(256, 64, generator=generator) < 0.01)
        product = tokens.T @ tokens
        exact += product.double()
        summed += product.to(GRAM_DTYPE)
    assert float((summed.double() - exact).norm() / exact.norm()) < 1e-5


@pytest.mark.parametrize("bias", [False, True])
def test_residuals_are_each_neurons_least_squares_residual_on_the_others(bias):
    """λ → 0: ``Residual`` gives, for every neuron at once, its activation minus its least-squares prediction from
    the layer's other neurons (and a constant where the down projection has a bias), as one regression per neuron
    computes it; a neuron that copies another has none."""
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(6, 6, generator=generator, dtype=torch.float64)
    tokens = torch.randn(400, 6, generator=generator, dtype=torch.float64) @ mixing
    tokens = tokens + 0.5
    tokens = torch.cat([tokens, tokens[:, :1]], dim=1)  # neuron 6 copies neuron 0
    layer = SimpleNamespace(name="ffn", down_proj=torch.nn.Linear(7, 3, bias=bias))
    repair = Repair("least_squares", [tokens.mean(0)], [tokens.T @ tokens], 1e-9, torch.tensor([400.0]))
    residuals = repair.residuals([layer])["ffn"](tokens).double()
    for neuron in range(5):
        others = torch.cat([tokens[:, :neuron], tokens[:, neuron + 1 :]], dim=1)
        if bias:
            others = torch.cat([others, torch.ones(400, 1, dtype=torch.float64)], dim=1)
        expected = tokens[:, neuron] - others @ (torch.linalg.pinv(others) @ tokens[:, neuron])
        torch.testing.assert_close(residuals[:, neuron], expected, rtol=1e-3, atol=1e-3)
    assert float(residuals[:, 6].abs().max()) < 1e-3


def test_bias_reconstruction_needs_no_second_moments_and_least_squares_does(bert_dir):
    model = load_model(bert_dir, TASKS["sst2"])
    means = [torch.zeros(layer.size) for layer in model.ffn_layers()]
    assert Repair("bias", means).applies_to(model.ffn_layers()[0])
    with pytest.raises(ValueError, match="second moments"):
        Repair("least_squares", means)


def _refit_residual(weight: Tensor, moment: Tensor, kept: list[int]) -> float:
    """Output energy the least-squares refit of ``weight`` from neurons ``kept`` leaves (second moment ``moment``)."""
    total = torch.trace(weight @ moment @ weight.T)
    if not kept:
        return float(total)
    cross = moment[:, kept]
    explained = weight @ cross @ torch.linalg.solve(moment[kept][:, kept], cross.T) @ weight.T
    return float(total - torch.trace(explained))


def test_obs_removal_order_is_the_brute_force_greedy_refit_order():
    """With scores equal to each neuron's refit-aware energy (Wanda's), each step removes the neuron whose loss the
    least-squares refit of the others leaves the smallest: checked against re-solving the refit for every choice."""
    from lightning_prune.pruning.obs import removal_order

    torch.manual_seed(0)
    weight = torch.randn(5, 8, dtype=torch.float64)
    activations = torch.randn(200, 8, dtype=torch.float64) @ torch.randn(8, 8, dtype=torch.float64)
    moment = activations.T @ activations / 200 + 1e-3 * torch.eye(8, dtype=torch.float64)
    precision = torch.linalg.inv(moment)
    energy = weight.pow(2).sum(0) / precision.diagonal()
    order, costs = removal_order(weight.float(), precision, energy, 6)
    alive, expected = list(range(8)), []
    for _ in range(6):
        losses = {j: _refit_residual(weight, moment, [k for k in alive if k != j]) for j in alive}
        best = min(losses, key=losses.get)
        expected.append(best)
        alive.remove(best)
    assert order.tolist() == expected
    assert (costs >= -1e-9).all()


def test_obs_keeps_the_removal_order_when_widths_are_rounded():
    from lightning_prune.pruning.obs import global_removals, kept_after

    orders = [torch.tensor([3, 0, 5, 1]), torch.tensor([2, 4])]
    kept = kept_after(orders, [6, 6], [3, 1])
    assert kept[0].tolist() == [1, 2, 4] and kept[1].tolist() == [0, 1, 3, 4, 5]
    costs = [torch.tensor([1.0, 5.0, 2.0]), torch.tensor([3.0, 4.0])]  # layer 0's third removal comes after its 5.0
    assert global_removals(costs, 3) == [1, 2]


def test_fit_free_obs_rounds_widths_along_its_order(llama_dir, glue_dir, tmp_path, capsys):
    out = tmp_path / "run"
    extra = ["--keep_rule", "obs", "--width_multiple", "8", "--sparsity", "0.4", "--reconstruct", "least_squares"]
    code, _, err = run_cli(fit_free_args(llama_dir, glue_dir, out, *extra), capsys)
    assert code == 0, err
    widths = [layer["kept"] for layer in json.loads((out / "metrics.json").read_text())["ffn_neurons"].values()]
    assert widths and all(w % 8 == 0 and 0 < w < 48 for w in widths), widths
