"""Reading a task's examples from a TSV file: its GLUE file, or a ``sentence<TAB>label`` file (the unseen-domain
sets). Bad files are one-line errors naming the file and line."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from lightning_prune.errors import UsageError
from lightning_prune.tasks.spec import Example, TaskSpec


def check_data_file(path: str | Path, what: str = "data file") -> Path:
    """``path`` as a Path, if it names an existing file (a folder or a missing path is a one-line error)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder, not a file: give the TSV file itself")
    if path.exists() and not path.is_file():  # reading a pipe would hang, /dev/zero fill the memory
        raise UsageError(f"{what} {path} is not a regular file (a device, pipe or socket): give the TSV file itself")
    if not path.is_file():
        raise UsageError(f"{what} {path} does not exist: check the path (or data_dir)")
    return path


def _read_tsv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """The non-blank rows with their line numbers in the file (blank lines are skipped, not renumbered)."""
    data = check_data_file(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        start = error.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data.count(b"\n", 0, start) + 1
        raise UsageError(
            f"data file {path} is not UTF-8: byte offset {start} (line {line}) cannot be decoded; "
            "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None
    csv.field_size_limit(sys.maxsize)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    if not rows:
        raise UsageError(f"data file {path} is empty: give a file with examples")
    return rows


def _column(header: list[str], names: tuple[str, ...] | int, path: Path) -> int:
    if isinstance(names, int):
        return names
    for name in names:
        if name in header:
            return header.index(name)
    raise UsageError(
        f"data file {path} has no column {' or '.join(map(repr, names))} (header: {', '.join(header)}); "
        "give a file in the task's GLUE TSV format or a sentence<TAB>label file"
    )


def read_tsv(path: str | Path, spec: TaskSpec) -> list[Example]:
    """Read a task's examples from its GLUE TSV file, or from a ``sentence<TAB>label`` file (header row
    ``sentence``, ``label``) for single-sentence tasks — how the unseen-domain sets are given."""
    path = Path(path)
    rows = _read_tsv_rows(path)
    columns, label_column, has_header = spec.tsv_columns, spec.tsv_label_column, spec.tsv_has_header
    first = [name.strip() for name in rows[0][1]]
    if first == ["sentence", "label"]:
        if len(spec.text_fields) != 1:
            raise UsageError(
                f"{path} is a sentence<TAB>label file, but task {spec.name} has two texts per example; "
                "such files only fit single-sentence tasks (sst2, cola, or a task given with labels)"
            )
        columns, label_column, has_header = (("sentence",),), ("label",), True
    header = first if has_header else []
    body = rows[1:] if has_header else rows
    if not body:
        raise UsageError(f"data file {path} has a header but no examples: give a file with examples")
    text_idx = [_column(header, c, path) for c in columns]
    label_idx = _column(header, label_column, path)
    width = max([*text_idx, label_idx]) + 1
    examples = []
    for offset, (line, row) in enumerate(body):
        where = f"{path}:{line}"
        if len(row) < width:
            raise UsageError(f"{where}: expected at least {width} tab-separated columns, found {len(row)}")
        label = spec.parse_label(row[label_idx], where)
        examples.append(Example(tuple(row[i] for i in text_idx), label, offset))
    return examples


def read_texts(path: str | Path, what: str = "text file") -> list[str]:
    """The non-blank lines of a UTF-8 text file, one text each (a binary or empty file is a one-line error)."""
    data = check_data_file(path, what).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UsageError(
            f"{what} {path} is not UTF-8 text (byte offset {error.start}): give a text file, one text per line"
        ) from None
    if "\x00" in text:
        raise UsageError(f"{what} {path} holds NUL bytes, so it is not a text file: give one text per line")
    texts = [line for line in text.splitlines() if line.strip()]
    if not texts:
        raise UsageError(f"{what} {path} is empty: give one text per line")
    return texts
