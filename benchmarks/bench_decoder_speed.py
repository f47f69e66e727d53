"""Is a pruned decoder LM faster where users feel it? Prefill latency and greedy generation speed of a multi-task
decoder LM (``--model``: SmolLM2 or Gemma 3 270M, LoRA merged), dense vs FFN-pruned, each saved by fit-free's
writer and loaded back by plain
``transformers.AutoModelForCausalLM`` (as users run it), next to the FLOP ideal.

For FFN sparsity 0.227 / 0.3 / 0.5 / 0.7 (every layer; magnitude scores: speed does not depend on which neurons go),
0.3 with every layer's kept width rounded down to a multiple of 8 (``0.3/8``: ``--width_multiple 8``), and
0.3 / 0.5 with one of the three head groups (a key/value head and its 3 query heads) removed from every layer
(``heads 2/3 + 0.3``: the shapes ``--target_speedup`` gives with layer scope), 0.5 with one ranking over the
model and every layer keeping at least a quarter of its neurons (``0.5 global/0.25``: ``--scope global``,
``--min_keep`` a quarter of the width; uneven widths, so loaded by ``lightning_prune.load_pruned_model``), and 0.5
with SST-2's task vocabulary (``0.5 + task vocabulary``: ``--vocabulary task``, the tokens of SST-2's training
prompts), in one process:

- prefill latency at batch 1: ms per SST-2 prompt (the task's rendered prompt, dynamic length);
- greedy generation, 64 new tokens (``min_new_tokens`` = 64), batch 1 and batch 8 (left-padded): tokens/s;
- the FLOP ideal: dense FLOPs / pruned FLOPs per token (Q/K/V/O, gated FFN, output head; attention scores are
  left out: they are small at these lengths), and measured / ideal.

Models are timed in alternating rounds (median of rounds) so drift hits all alike. Writes
``benchmarks/results/decoder_speed.{csv,md}``. Re-run (alone on the machine: timings):

    python benchmarks/bench_decoder_speed.py --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import torch
from experiments import GLUE
from results_io import write_csv, write_report
from runner import MULTITASK_GEMMA3, MULTITASK_LM

from lightning_prune import load_model, load_pruned_model
from lightning_prune.export import save_model_folder
from lightning_prune.pruning import Cut, keep_neurons, pruned
from lightning_prune.pruning.keep import round_widths
from lightning_prune.scorers import create_scorer
from lightning_prune.tasks import TASKS, load_split
from lightning_prune.vocabulary import plan_vocabulary

# name: (FFN sparsity, kept widths rounded down to a multiple of, head groups removed per layer, per-layer floor of
# a global ranking as a fraction of the width or 0 for the same fraction from every layer, task vocabulary).
# "0.227": the shape ``--target_speedup 1.2`` gave Fisher on SST-2 (every head kept; multitask_lm_speedup.md),
# which keeps 0.985.
VARIANTS = {
    "0.227": (0.2272, 1, 0, 0, False), "0.3": (0.3, 1, 0, 0, False), "0.3/8": (0.3, 8, 0, 0, False),
    "0.5": (0.5, 1, 0, 0, False), "0.5 global/0.25": (0.5, 1, 0, 0.25, False), "0.7": (0.7, 1, 0, 0, False),
    "heads 2/3 + 0.3": (0.3, 1, 1, 0, False), "heads 2/3 + 0.5": (0.5, 1, 1, 0, False),
    "0.5 + task vocabulary": (0.5, 1, 0, 0, True),
}  # fmt: skip
NEW_TOKENS = 64
# --model: (settings, result name, the reports' name of the model)
MODELS = {
    "smollm2": (MULTITASK_LM, "decoder_speed", "multi-task SmolLM2"),
    "gemma3": (MULTITASK_GEMMA3, "gemma3_decoder_speed", "multi-task Gemma 3 270M"),
}


def flops_per_token(config, ffn_widths: list[int]) -> float:
    """2 x multiply-adds per token of the projections, the gated FFNs and the output head."""
    hidden, heads, kv_heads = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    ffn = sum(3 * hidden * width for width in ffn_widths)
    return 2 * (len(ffn_widths) * attention + ffn + hidden * config.vocab_size)


def timed(function, *arguments) -> float:
    start = time.perf_counter()
    function(*arguments)
    return time.perf_counter() - start


def build_models(source, vocabulary, prompts: list[str], tmp: Path) -> tuple[dict, dict, dict]:
    """Each variant saved by fit-free's writer and loaded back as users load it; its FFN widths and its inputs (the
    prompts one by one, 8 of them left-padded together, the pad id) from its own saved tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    (*scores,) = create_scorer("magnitude").score_units(source, None, source.unit_layers(heads=True))
    scores, head_scores = scores[: len(source.ffn_layers())], scores[len(source.ffn_layers()) :]
    groups = source.attention_layers()[0].size  # a model with one key/value head has no head group to spare
    variants = {"dense": (0.0, 1, 0, 0.0, False), **{n: v for n, v in VARIANTS.items() if v[2] < groups}}
    models, widths, inputs = {}, {}, {}
    for number, (name, (sparsity, multiple, dropped, floor, task_vocabulary)) in enumerate(variants.items()):
        folder = tmp / f"model-{number}"  # names hold "/"
        scope = {"scope": "global", "min_keep": round(floor * scores[0].numel())} if floor else {}
        kept = round_widths(scores, keep_neurons(scores, sparsity, **scope), multiple)  # --width_multiple
        heads = [s.argsort(descending=True)[: s.numel() - dropped].sort().values for s in head_scores]
        cut = Cut(sparsity, kept, heads if dropped else None, vocabulary=vocabulary if task_vocabulary else None)
        with pruned(source, cut) if sparsity else contextlib.nullcontext():
            save_model_folder(source, folder)  # with its plan: load_pruned_model rebuilds uneven widths from it
        if floor:  # uneven widths: plain from_pretrained cannot build them
            models[name] = load_pruned_model(str(folder), "sst2").weights_module.float().eval()
        else:
            models[name] = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        widths[name] = [layer.mlp.down_proj.in_features for layer in models[name].model.layers]
        tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")  # its own ids
        inputs[name] = (
            [tokenizer(text, return_tensors="pt") for text in prompts],
            tokenizer(prompts[:8], return_tensors="pt", padding=True),
            tokenizer.pad_token_id,
        )
    return models, widths, inputs


def time_models(models: dict, inputs: dict, rounds: int) -> dict[str, dict[str, float]]:
    """Median prefill ms per prompt and generation tokens/s at batch 1 and 8, in alternating rounds."""

    def prefill(name: str) -> None:
        with torch.inference_mode():
            for ids in inputs[name][0]:
                models[name](**ids, use_cache=False)

    def generate(name: str, batch) -> None:
        with torch.inference_mode():
            models[name].generate(
                **batch, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                pad_token_id=inputs[name][2],
            )  # fmt: skip

    measures: dict[str, dict[str, list[float]]] = {"prefill_ms": {}, "tokens_per_s_b1": {}, "tokens_per_s_b8": {}}
    for name in models:  # warm-up
        prefill(name)
        generate(name, inputs[name][0][0])
    for _ in range(rounds):
        for name in models:
            prompts, batch8 = inputs[name][0], inputs[name][1]
            measures["prefill_ms"].setdefault(name, []).append(1000 * timed(prefill, name) / len(prompts))
            seconds = sum(timed(generate, name, ids) for ids in prompts[:4])
            measures["tokens_per_s_b1"].setdefault(name, []).append(4 * NEW_TOKENS / seconds)
            measures["tokens_per_s_b8"].setdefault(name, []).append(8 * NEW_TOKENS / timed(generate, name, batch8))
    return {key: {name: statistics.median(v) for name, v in values.items()} for key, values in measures.items()}


def rows_of(models: dict, widths: dict, median: dict[str, dict[str, float]]) -> list[dict]:
    dense_flops = flops_per_token(models["dense"].config, widths["dense"])
    rows = []
    for name, model in models.items():
        ideal = dense_flops / flops_per_token(model.config, widths[name])
        prefill_speedup = median["prefill_ms"]["dense"] / median["prefill_ms"][name]
        b1 = median["tokens_per_s_b1"][name] / median["tokens_per_s_b1"]["dense"]
        b8 = median["tokens_per_s_b8"][name] / median["tokens_per_s_b8"]["dense"]
        rows.append({
            "model": name, "parameters": sum(p.numel() for p in model.parameters()),
            "ffn_width_min": min(widths[name]), "ffn_width_max": max(widths[name]),
            "query_heads": model.config.num_attention_heads,
            "prefill_ms_b1": round(median["prefill_ms"][name], 2), "prefill_speedup": round(prefill_speedup, 3),
            "tokens_per_s_b1": round(median["tokens_per_s_b1"][name], 1), "generation_speedup_b1": round(b1, 3),
            "tokens_per_s_b8": round(median["tokens_per_s_b8"][name], 1), "generation_speedup_b8": round(b8, 3),
            "flop_ideal": round(ideal, 3),
        })  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=list(MODELS), default="smollm2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = TASKS["sst2"]
    settings, name_of_results, title = MODELS[args.model]
    source = load_model(settings["path"], spec, settings["max_length"], adapter=settings["adapter"])
    examples = load_split(spec, "validation", GLUE)[: max(args.prompts, 8)]
    prompts = [source.render(e) for e in examples][: max(args.prompts, 8)]
    vocabulary = plan_vocabulary(source, source.vocabulary_texts(load_split(spec, "train", GLUE)), [])
    with tempfile.TemporaryDirectory() as tmp:
        models, widths, inputs = build_models(source, vocabulary, prompts, Path(tmp))
    for name in inputs:
        inputs[name] = (inputs[name][0][: args.prompts], *inputs[name][1:])
    rows = rows_of(models, widths, time_models(models, inputs, args.rounds))
    write_csv(name_of_results, rows)
    report(rows, args, title, name_of_results, vocabulary)


def report(rows: list[dict], args: argparse.Namespace, title: str, name_of_results: str, vocabulary) -> None:
    lines = [
        f"# Decoder LM speed: dense vs pruned {title}",
        "",
        f"Saved by fit-free's writer, loaded by plain `AutoModelForCausalLM` (float32), {args.threads} CPU threads, "
        f"torch {torch.__version__}, median of {args.rounds} alternating rounds. Prefill: {args.prompts} SST-2 "
        f"prompts one by one; generation: {NEW_TOKENS} greedy new tokens, 4 prompts one by one (b=1) and 8 "
        "left-padded prompts together (b=8). FLOP ideal: projections, FFN and output head per token. `0.3/8`: 0.3 "
        "with every kept width rounded down to a multiple of 8. `0.5 global/0.25`: one magnitude ranking over the "
        "model, every layer keeping at least a quarter of its neurons (uneven widths; FFN width column: "
        "narrowest–widest layer), loaded by `lightning_prune.load_pruned_model`. `0.5 + task vocabulary`: 0.5 with "
        f"`--vocabulary task` (SST-2's training prompts: {vocabulary.kept:,} of {vocabulary.total:,} tokens). "
        "Written by `benchmarks/bench_decoder_speed.py`.",
        "",
        "| model | parameters | FFN width | query heads | prefill ms (b=1) | speedup | tokens/s (b=1) | speedup "
        "| tokens/s (b=8) | speedup | FLOP ideal |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        low, high = r["ffn_width_min"], r["ffn_width_max"]
        width = low if low == high else f"{low}–{high}"
        lines.append(
            f"| {r['model']} | {r['parameters']:,} | {width} | {r['query_heads']} | "
            f"{r['prefill_ms_b1']:.1f} | "
            f"{r['prefill_speedup']:.2f} | {r['tokens_per_s_b1']:.1f} | {r['generation_speedup_b1']:.2f} | "
            f"{r['tokens_per_s_b8']:.1f} | {r['generation_speedup_b8']:.2f} | {r['flop_ideal']:.2f} |"
        )
    write_report(name_of_results, lines)


if __name__ == "__main__":
    main()
