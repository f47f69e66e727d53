"""Tasks: what a task's examples look like (``spec``), where they come from (``files``: TSV files; ``splits``: a
GLUE folder or the hub), and how GLUE scores them (``metrics``)."""

from lightning_prune.tasks.files import check_data_file, read_texts, read_tsv
from lightning_prune.tasks.metrics import build_metrics, metric_inputs
from lightning_prune.tasks.spec import TASKS, Example, TaskSpec, get_task, sentence_task
from lightning_prune.tasks.splits import GLUE_HUB_ID, SPLITS, hub_offline, load_split, require_hub

__all__ = [
    "GLUE_HUB_ID",
    "SPLITS",
    "TASKS",
    "Example",
    "TaskSpec",
    "build_metrics",
    "check_data_file",
    "get_task",
    "hub_offline",
    "load_split",
    "metric_inputs",
    "read_texts",
    "read_tsv",
    "require_hub",
    "sentence_task",
]
