"""One main-table cell computed both ways: by the experiment helpers of ``experiments.py`` (segment-cached scores,
their own evaluation loop, pruning a deep copy) and by the user's pipeline (``runner.run_cell``: ``fit_free`` on
a ``TaskModel`` and ``TaskDataModule``, through ``trainer.predict`` and ``trainer.test``), on the same scoring
examples (written to a ``--data.score_file``), the same 300 evaluation examples, the same bias compensation.

Writes ``benchmarks/results/one_pipeline.md``. Re-run: ``python benchmarks/check_one_pipeline.py``.
"""

from __future__ import annotations

import time

from experiments import (
    ATTRIBUTION,
    EVAL_LIMIT,
    MODEL,
    bias_compensation,
    data_scores,
    dense_model,
    eval_examples,
    primary,
    prune_and_evaluate,
    score_pool,
)
from results_io import markdown_table, write_report
from runner import RUNS, glue_data, run_cell

from lightning_prune.io import atomic_path
from lightning_prune.modules import TaskModel
from lightning_prune.tasks import TASKS

TASK, EXAMPLES, SPARSITIES = "sst2", 128, (0.5, 0.9)


def main() -> None:
    spec = TASKS[TASK]
    pool = score_pool(spec, 0)
    start = time.perf_counter()
    dense = dense_model(spec)
    scores = data_scores(dense, "attribution", ATTRIBUTION, pool, EXAMPLES)
    helpers = prune_and_evaluate(
        dense, spec, scores, SPARSITIES, eval_examples(spec, EVAL_LIMIT), reconstruction=bias_compensation(
            dense, pool, EXAMPLES)
    )  # fmt: skip
    helper_seconds = time.perf_counter() - start
    score_file = RUNS / "data" / f"{TASK}_main_table_seed0_{EXAMPLES}.tsv"
    score_file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(score_file) as tmp:
        tmp.write_text("sentence\tlabel\n" + "".join(f"{e.texts[0]}\t{e.label}\n" for e in pool[:EXAMPLES]))
    start = time.perf_counter()
    data = glue_data(TASK, score_file=str(score_file), eval_examples=EVAL_LIMIT, calibration_examples=None)
    summary = run_cell(
        "one_pipeline", TaskModel(str(MODEL), TASK), data, scorer="attribution", scorer_options=ATTRIBUTION,
        sparsity=list(SPARSITIES), reconstruct="bias",
    )  # fmt: skip
    pipeline_seconds = time.perf_counter() - start
    metric = spec.primary_metric
    pipeline = {point["sparsity"]: point["metrics"][metric] for point in summary["sweep"]}
    rows = [
        [
            f"{s:g}",
            f"{primary(spec, helpers[s]):.5f}",
            f"{pipeline[s]:.5f}",
            f"{pipeline[s] - primary(spec, helpers[s]):+.5f}",
        ]
        for s in SPARSITIES
    ]
    write_report(
        "one_pipeline",
        [
            "# One main-table cell, both ways",
            "",
            f"MiniLM multi-task model, {TASK}, attribution (m = 10, token weights), the main table's seed-0 draw of "
            f"{EXAMPLES} training examples, bias compensation from the same examples, {EVAL_LIMIT} seeded dev "
            f"examples ({metric}). *helpers*: `experiments.py` (segment-cached scores, its own evaluation loop); "
            "*pipeline*: `fit_free` through `runner.run_cell` (`trainer.predict`, `trainer.test`), the scoring "
            "examples given as `--data.score_file`. Written by `benchmarks/check_one_pipeline.py`.",
            "",
            *markdown_table(["sparsity", "helpers", "pipeline", "difference"], rows),
            "",
            f"Seconds: helpers {helper_seconds:.0f}, pipeline {pipeline_seconds:.0f} (each includes scoring unless "
            "cached).",
        ],
    )


if __name__ == "__main__":
    main()
