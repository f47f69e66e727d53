"""A task's splits: from a GLUE folder of TSV files (a local folder such as ``../shared/data/glue``), or from the
Hugging Face hub (``nyu-mll/glue``) through ``datasets``; and the seeded halves of a dev set."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path
from urllib.parse import urlparse

from lightning_prune.errors import UsageError
from lightning_prune.tasks.files import read_tsv
from lightning_prune.tasks.spec import TASKS, Example, TaskSpec

GLUE_HUB_ID = "nyu-mll/glue"
HUB_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
SPLITS = ("train", "validation", "validation_first_half", "validation_second_half")
HALF_SEED = 0  # fixed: the two halves of a dev set are the same partition in every run


def load_split(spec: TaskSpec, split: str, data_dir: str | Path | None) -> list[Example]:
    """A task split from a GLUE folder (``<data_dir>/<task>/<file>``) or, without ``data_dir``, from the hub.

    ``validation_first_half`` / ``validation_second_half`` partition the dev set by a fixed seeded shuffle
    (each half in file order): for tasks whose train file is not at hand (QNLI, MNLI in ``../shared/data``),
    one half can be used for fine-tuning and scoring and the other for evaluation.
    """
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    if split.startswith("validation_"):
        examples = load_split(spec, "validation", data_dir)
        order = list(range(len(examples)))
        random.Random(HALF_SEED).shuffle(order)
        half = order[: len(order) // 2] if split == "validation_first_half" else order[len(order) // 2 :]
        return [examples[i] for i in sorted(half)]
    if data_dir is not None:
        return read_tsv(Path(data_dir) / spec.name / spec.split_files[split], spec)
    if spec.name not in TASKS:
        raise UsageError(f"task {spec.name} is not on the hub: give its sentence<TAB>label files")
    return _load_hub_split(spec, split)


def hub_offline() -> bool:
    """Whether Hugging Face's offline mode is set: ``datasets`` then reads its cache only."""
    return any(os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE") for name in HUB_OFFLINE_VARIABLES)


def require_hub(option: str) -> None:
    """Fail at once, naming ``option``, when the Hugging Face hub's host does not accept a connection within
    3 s. In offline mode nothing is checked: ``datasets`` reads its cache, and a task missing there is the
    one-line error of loading it; with a proxy configured, ``datasets`` decides too."""
    if hub_offline() or any(os.environ.get(name) for name in PROXY_VARIABLES):
        return
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((host.hostname, host.port or 443), timeout=3).close()
    except OSError:
        raise UsageError(
            f"no {option} given and the Hugging Face hub is unreachable: give {option}, "
            "a folder of GLUE TSV files such as ../shared/data/glue"
        ) from None


def _load_hub_split(spec: TaskSpec, split: str) -> list[Example]:
    import datasets  # heavy: only for hub users

    try:
        rows = datasets.load_dataset(GLUE_HUB_ID, spec.name, split=spec.hub_splits[split])
    except Exception as error:  # the hub raises many kinds; all mean the same to the user
        where = "the datasets cache (offline mode)" if hub_offline() else "the hub"
        raise UsageError(
            f"could not load {GLUE_HUB_ID}/{spec.name} ({split}) from {where} ({type(error).__name__}): "
            "give data_dir instead (a folder of GLUE TSV files)"
        ) from None
    return [
        Example(tuple(row[f] for f in spec.text_fields), spec.parse_label(row["label"], f"{GLUE_HUB_ID} row {i}"), i)
        for i, row in enumerate(rows)
    ]
