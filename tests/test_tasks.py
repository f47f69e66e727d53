from __future__ import annotations

import pytest
import torch

from conftest import require_shared_data
from lightning_prune.data import subsample
from lightning_prune.errors import UsageError
from lightning_prune.tasks import TASKS, build_metrics, get_task, load_split, read_tsv

# Row counts of ../shared/data (MANIFEST.md): every GLUE format the project reads.
DEV_ROWS = {"sst2": 872, "cola": 1043, "mrpc": 408, "stsb": 1500, "rte": 277, "qnli": 5463, "mnli": 9815}


@pytest.mark.parametrize("task", sorted(DEV_ROWS))
def test_reads_every_glue_dev_file(task):
    glue = require_shared_data() / "glue"
    spec = TASKS[task]
    examples = load_split(spec, "validation", glue)
    assert len(examples) == DEV_ROWS[task]
    assert all(len(e.texts) == len(spec.text_fields) and all(e.texts) for e in examples)
    if spec.is_regression:
        assert all(0.0 <= e.label <= 5.0 for e in examples)
    else:
        assert {e.label for e in examples} == set(range(spec.num_labels))


def test_label_names_follow_hub_order():
    glue = require_shared_data() / "glue"
    first_rte = load_split(TASKS["rte"], "validation", glue)[0]
    assert first_rte.label == 1  # dev.tsv row 0 is "not_entailment", index 1 in nyu-mll/glue
    mrpc = load_split(TASKS["mrpc"], "train", glue)
    assert len(mrpc) == 3668 and sum(e.label for e in mrpc) == 2474  # "Quality" read through the BOM


def test_sentence_label_file_for_unseen_domain():
    data = require_shared_data()
    examples = read_tsv(data / "sentiment_domains" / "yelp" / "test.tsv", TASKS["sst2"])
    assert len(examples) == 1000 and sum(e.label for e in examples) == 500


def test_generic_single_sentence_task_with_string_labels():
    data = require_shared_data()
    spec = get_task("agnews", ["World", "Sports", "Business", "Sci/Tech"])
    examples = read_tsv(data / "agnews" / "test.tsv", spec)
    assert len(examples) == 7600 and sorted({e.label for e in examples}) == [0, 1, 2, 3]


def test_label_outside_label_set_names_file_line_and_labels(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("sentence\tlabel\nfine\t1\nodd\t7\n")
    with pytest.raises(UsageError, match=r"bad.tsv:3: label '7' is not in the label set of task sst2"):
        read_tsv(path, TASKS["sst2"])


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "is empty"), ("sentence\tlabel\n", "has a header but no examples"), ("text\ty\nhi\t1\n", "has no column")],
)
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "data.tsv"
    path.write_text(content)
    with pytest.raises(UsageError, match=message):
        read_tsv(path, TASKS["sst2"])


def test_sentence_file_refused_for_pair_task(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text("sentence\tlabel\nhi\t1\n")
    with pytest.raises(UsageError, match="two texts per example"):
        read_tsv(path, TASKS["rte"])


def test_unknown_task_lists_tasks():
    with pytest.raises(UsageError, match=r"unknown task 'sst3'.*sst2, cola"):
        get_task("sst3")


def test_subsample_is_seeded_and_bounded(glue_dir):
    examples = load_split(TASKS["sst2"], "train", glue_dir)
    first = subsample(examples, 8, seed=3, what="num_examples")
    assert first == subsample(examples, 8, seed=3, what="num_examples")
    assert first != subsample(examples, 8, seed=4, what="num_examples")
    with pytest.raises(UsageError, match="asked for 1000 examples"):
        subsample(examples, 1000, seed=0, what="num_examples")


def test_dev_halves_partition_the_dev_set():
    glue = require_shared_data() / "glue"
    spec = TASKS["qnli"]
    first, second = (load_split(spec, f"validation_{half}_half", glue) for half in ("first", "second"))
    assert len(first) + len(second) == DEV_ROWS["qnli"] and len(first) == DEV_ROWS["qnli"] // 2
    assert not {e.index for e in first} & {e.index for e in second}
    assert first == load_split(spec, "validation_first_half", glue)  # the same partition every time


def test_two_class_tasks_report_the_share_of_class_1_answers():
    """``positive_rate``: the drift of a pruned model to one class, beside GLUE's metrics (two-class tasks only)."""
    metrics = build_metrics(get_task("sst2"))
    metrics.update(torch.tensor([1, 0, 1, 1]), torch.tensor([1, 1, 0, 1]))
    assert {name: float(value) for name, value in metrics.compute().items()} == {"accuracy": 0.5, "positive_rate": 0.75}
    assert "positive_rate" not in build_metrics(get_task("mnli")) and "positive_rate" not in build_metrics(
        get_task("stsb")
    )
