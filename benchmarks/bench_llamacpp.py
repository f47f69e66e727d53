"""Pruned decoder LMs where small LMs run: the multi-task SmolLM2 (LoRA merged) for SST-2, dense and pruned by
fit-free (``--export_gguf``), run in llama.cpp itself (llama-cpp-python, ``pip install -e '.[llamacpp]'``):

- agreement: on all 872 SST-2 dev sentences, the label word llama.cpp ranks first (the prompt's next-token logits,
  from the same token ids) against the one transformers ranks first (``load_pruned_model(...).predict``); f16, and
  q8_0's accuracy beside;
- tokenization: llama.cpp's ids of 200 dev sentences against the saved Hugging Face tokenizer's;
- speed, batch 1, ``--threads`` threads, alternating rounds in one process: prompt (prefill) tokens/s over SST-2
  prompts, and greedy generation tokens/s (``NEW_TOKENS`` tokens after a prompt).

Models: dense (``lightning-prune export --model.adapter``), 30% and 50% FFN per layer (llama.cpp's ``llama``), 50%
with one ranking over the model and a quarter of every layer kept (uneven widths: ``deci``), 50% with the task
vocabulary; fit-free's defaults and ``configs/smollm2_multitask_sst2.yaml``'s settings (64 scoring examples, joint
attribution). Writes ``benchmarks/results/llamacpp.{csv,md}``. Re-run (alone on the machine: timings):

    python benchmarks/bench_llamacpp.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from exp_decoder_lm import data_of
from results_io import markdown_table, write_csv, write_report
from runner import JOINT_ATTRIBUTION, MULTITASK_LM, RUNS, cell_key, run_cell

from lightning_prune import load_pruned_model
from lightning_prune.commands.export import export
from lightning_prune.modules import TaskModel
from lightning_prune.tasks import TASKS, load_split

EXPERIMENT = "llamacpp"
VARIANTS: dict[str, dict[str, Any]] = {
    "0.3": {"sparsity": 0.3},
    "0.5": {"sparsity": 0.5},
    "0.5 global/0.25": {"sparsity": 0.5, "scope": "global", "min_keep": 384},
    "0.5 + task vocabulary": {"sparsity": 0.5, "vocabulary": "task"},
}
NEW_TOKENS = 64
COLUMNS = ["model", "f16 MiB", "transformers acc.", "llama.cpp f16 acc. (of dense)", "agreement", "same tokens",
           "q8_0 acc.", "prompt tok/s", "generation tok/s"]  # fmt: skip


def build(eval_examples: int) -> tuple[dict[str, Path], dict[str, Path]]:
    """Each variant's saved HF folder and its f16 GGUF (fit-free writes both; the dense one is exported)."""
    model = TaskModel(task="sst2", **MULTITASK_LM)
    data = data_of("sst2", eval_examples, 0)
    folders, files = {}, {}
    dense = RUNS / EXPERIMENT / "dense.f16.gguf"
    if not dense.exists():
        dense.parent.mkdir(parents=True, exist_ok=True)
        print(export(MULTITASK_LM["path"], str(dense), "f16", MULTITASK_LM["adapter"]), flush=True)
    files["dense"] = dense
    for name, variant in VARIANTS.items():
        options = {"scorer_options": dict(JOINT_ATTRIBUTION), **variant, "save_models": "auto", "export_gguf": "f16"}
        run_cell(EXPERIMENT, model, data, **options)
        folder = RUNS / EXPERIMENT / cell_key(model, data, options)
        folders[name], files[name] = folder / "model", folder / "model.gguf"
    return folders, files


def quantized(file: Path, folder: Path | None) -> Path:
    """The q8_0 twin of an f16 export (from the same source)."""
    target = file.with_name(file.name.replace(".f16", "").replace(".gguf", ".q8_0.gguf"))
    if not target.exists():
        source, adapter = (str(folder), None) if folder else (MULTITASK_LM["path"], MULTITASK_LM["adapter"])
        export(source, str(target), "q8_0", adapter)
    return target


def choices(llm, prompts: list[list[int]], candidates: list[int]) -> list[int]:
    """The label word llama.cpp ranks first after each prompt (token ids given, not re-tokenized)."""
    picked = []
    for ids in prompts:
        llm.reset()
        llm.eval(ids)
        picked.append(int(np.argmax(np.asarray(llm.scores[len(ids) - 1])[candidates])))
    return picked


def reference(folder: Path | None, examples: list) -> tuple[list[list[int]], list[int], list[int], Any]:
    """transformers' side: each prompt's token ids, the label words' ids, the label word it ranks first, and the
    tokenizer the model was saved with."""
    if folder is None:
        from lightning_prune import load_model

        net = load_model(MULTITASK_LM["path"], TASKS["sst2"], 256, adapter=MULTITASK_LM["adapter"])
    else:
        net = load_pruned_model(str(folder), "sst2")
    prompts, answers = [], []
    for start in range(0, len(examples), 16):
        batch = net.collate(examples[start : start + 16])
        answers += net.predict(batch).tolist()
        for row, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
            prompts.append(row[: int(mask.sum())].tolist())
    return prompts, net.candidate_ids[:, 0].tolist(), answers, net.source_tokenizer


def same_tokens(llm, tokenizer, texts: list[str]) -> float:
    """The share of ``texts`` llama.cpp tokenizes to the saved Hugging Face tokenizer's ids."""
    same = [
        llm.tokenize(text.encode(), add_bos=False, special=False)
        == tokenizer(text, add_special_tokens=False)["input_ids"]
        for text in texts
    ]
    return float(np.mean(same))


def speed(llms: dict[str, Any], prompts: dict[str, list[list[int]]], rounds: int) -> dict[str, dict[str, float]]:
    """Prefill and generation tokens/s per model, median of alternating rounds."""
    measured: dict[str, dict[str, list[float]]] = {name: {"prompt": [], "generation": []} for name in llms}
    for _ in range(rounds):
        for name, llm in llms.items():
            sample = prompts[name][:16]
            start = time.perf_counter()
            for ids in sample:
                llm.reset()
                llm.eval(ids)
            measured[name]["prompt"].append(sum(map(len, sample)) / (time.perf_counter() - start))
            llm.reset()
            llm.eval(sample[0])
            start = time.perf_counter()
            for _ in range(NEW_TOKENS):
                llm.eval([int(np.argmax(np.asarray(llm.scores[llm.n_tokens - 1])))])
            measured[name]["generation"].append(NEW_TOKENS / (time.perf_counter() - start))
    return {name: {k: statistics.median(v) for k, v in values.items()} for name, values in measured.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--eval-examples", type=int, default=300, help="fit-free's evaluation (the saved models')")
    args = parser.parse_args()
    from llama_cpp import Llama

    folders, files = build(args.eval_examples)
    examples = load_split(TASKS["sst2"], "validation", data_of("sst2", 0, 0)["data_dir"])
    rows, llms, prompts = [], {}, {}
    for name, file in files.items():
        folder = folders.get(name)
        ids, candidates, transformers_answers, tokenizer = reference(folder, examples)
        labels = [e.label for e in examples]
        row: dict[str, Any] = {"model": name, "gguf_mib": round(file.stat().st_size / 2**20, 1)}
        for dtype, path in (("f16", file), ("q8_0", quantized(file, folder))):
            llm = Llama(model_path=str(path), n_ctx=512, n_threads=args.threads, n_threads_batch=args.threads,
                        logits_all=True, verbose=False)  # fmt: skip
            answers = choices(llm, ids, candidates)
            row[f"{dtype}_agreement"] = round(float(np.mean(np.equal(answers, transformers_answers))), 4)
            row[f"{dtype}_accuracy"] = round(float(np.mean(np.equal(answers, labels))), 4)
            if dtype == "f16":
                llms[name], prompts[name] = llm, ids
                row["same_tokens"] = round(same_tokens(llm, tokenizer, [e.texts[0] for e in examples[:200]]), 4)
        row["transformers_accuracy"] = round(float(np.mean(np.equal(transformers_answers, labels))), 4)
        rows.append(row)
        print(row, flush=True)
    timings = speed(llms, prompts, args.rounds)
    for row in rows:
        timing = timings[row["model"]]
        row["prompt_tokens_per_s"], row["generation_tokens_per_s"] = (
            round(timing["prompt"], 1),
            round(timing["generation"], 1),
        )
        row["prompt_speedup"] = round(timing["prompt"] / timings["dense"]["prompt"], 3)
        row["generation_speedup"] = round(timing["generation"] / timings["dense"]["generation"], 3)
    write_csv(EXPERIMENT, rows)
    report(rows, args)


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    dense = next(r for r in rows if r["model"] == "dense")
    table = [
        [r["model"], f"{r['gguf_mib']:.0f}", f"{r['transformers_accuracy']:.4f}",
         f"{r['f16_accuracy']:.4f} ({r['f16_accuracy'] / dense['f16_accuracy']:.3f})", f"{r['f16_agreement']:.1%}",
         f"{r['same_tokens']:.0%}",
         f"{r['q8_0_accuracy']:.4f}", f"{r['prompt_tokens_per_s']:.0f} ({r['prompt_speedup']:.2f}x)",
         f"{r['generation_tokens_per_s']:.1f} ({r['generation_speedup']:.2f}x)"]
        for r in rows
    ]  # fmt: skip
    write_report(
        EXPERIMENT,
        [
            "# Pruned decoder LMs in llama.cpp",
            "",
            "The multi-task SmolLM2 (LoRA merged) for SST-2, written by `fit-free --export_gguf f16` (the dense one "
            "by `lightning-prune export --model.adapter`), run by llama-cpp-python on all 872 SST-2 dev sentences. "
            "*agreement*: llama.cpp's first-ranked label word equals transformers' (same token ids); *same tokens*: "
            "of 200 dev sentences, those llama.cpp tokenizes to the saved tokenizer's ids. Speed: batch 1, "
            f"{args.threads} threads, median of {args.rounds} alternating rounds; prompt tokens/s over 16 SST-2 "
            f"prompts, generation tokens/s over {NEW_TOKENS} greedy tokens. Written by "
            "`python benchmarks/bench_llamacpp.py`.",
            "",
            *markdown_table(COLUMNS, table),
        ],
    )


if __name__ == "__main__":
    main()
