"""Outputs that never touch inputs: checked before the work, written atomically, replaced only if ours.

Every file and the run directory appear complete or not at all (written under a temporary name, then
renamed). A run directory carries ``MARKER_FILE``; ``overwrite`` replaces only a folder that carries it,
so no option can replace a folder lightning-prune did not write.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lightning_prune.errors import UsageError

MARKER_FILE = ".lightning-prune-output"
MARKER_TEXT = "Written by lightning-prune: `--overwrite true` may replace this folder (only folders with this file).\n"


def _target(final: Path) -> Path:
    """Where ``final`` really is: a symlink is followed, so the link stays and its target is written."""
    final = Path(final).expanduser()
    return final.resolve() if final.is_symlink() else final


Protected = Mapping[str, "str | Path | None"]  # what a run reads, by description (see check_output_location)


@contextlib.contextmanager
def atomic_path(final: Path, protected: Protected | None = None) -> Iterator[Path]:
    """Yield a temporary sibling of ``final`` to write; rename it into place only if the block succeeds.
    ``protected``: the run's inputs, which the clean-up of killed runs' leftovers never touches."""
    final = _target(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(final, protected)
    tmp = _temporary_name(final, "tmp")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _temporary_name(final: Path, kind: str) -> Path:
    """A hidden sibling of ``final`` owned by this process: ``.<name>.<kind>-<pid>``."""
    return final.with_name(f".{final.name}.{kind}-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _touches(path: Path, protected: Protected | None) -> bool:
    """Whether ``path`` is, lies inside or contains one of the ``protected`` inputs (symlinks resolved)."""
    resolved = path.resolve()
    return any(
        source is not None and _relation(resolved, Path(source).expanduser().resolve()) is not None
        for source in (protected or {}).values()
    )


def remove_stale_siblings(final: Path, protected: Protected | None = None) -> None:
    """Clean up after runs that were killed (their process is gone): delete their temporary siblings of
    ``final``, and if one died between moving the old ``final`` aside and moving the new one in, put the
    old one back. A leftover that is, holds or lies inside one of the ``protected`` inputs is left alone: a
    user may prune from a folder that a killed sweep left behind."""
    for leftover in sorted(final.parent.glob(f".{final.name}.*-*")):
        kind, _, pid = leftover.name.rpartition("-")
        if not (kind.endswith((".tmp", ".old")) and pid.isdigit()) or _pid_alive(int(pid)):
            continue
        if _touches(leftover, protected):
            continue
        if kind.endswith(".old") and not final.exists():
            os.replace(leftover, final)
        elif leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def is_own_output(folder: Path) -> bool:
    """Whether ``folder`` is a run folder lightning-prune wrote (it carries the marker file)."""
    return (Path(folder) / MARKER_FILE).is_file()


def check_replaceable(final: Path, overwrite: bool, what: str = "output_dir") -> None:
    """``final`` is free (missing or empty), or ``overwrite`` is set and it is a folder lightning-prune wrote."""
    final = _target(final)
    if final.exists() and not final.is_dir():
        raise UsageError(f"{what} {final} is a file: choose a folder path")
    if not final.is_dir() or not any(final.iterdir()):
        return
    if not overwrite:
        raise UsageError(
            f"{what} {final} already holds files: choose another folder, or pass --overwrite true to replace "
            "an earlier lightning-prune run"
        )
    if not is_own_output(final):
        raise UsageError(
            f"{what} {final} holds files lightning-prune did not write (no {MARKER_FILE} in it); --overwrite only "
            "replaces folders lightning-prune wrote: choose another folder"
        )


@contextlib.contextmanager
def atomic_directory(final: Path, overwrite: bool = False, protected: Protected | None = None) -> Iterator[Path]:
    """Yield an empty temporary directory (holding only the marker file) that replaces ``final`` once the
    block succeeds; an existing ``final`` is replaced only if ``check_replaceable`` allows it.
    ``protected``: as for ``atomic_path``."""
    final = _target(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(final, protected)
    tmp = _temporary_name(final, "tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        (tmp / MARKER_FILE).write_text(MARKER_TEXT)
        yield tmp
        _readable_like(tmp, tmp / MARKER_FILE)
        check_replaceable(final, overwrite)  # again: someone may have filled it while this run worked
        if final.is_dir() and not any(final.iterdir()):
            final.rmdir()
        if final.exists():
            old = _temporary_name(final, "old")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _readable_like(folder: Path, reference: Path) -> None:
    """Give every file under ``folder`` at least the permissions of ``reference`` (a file this process wrote
    the usual way, so the user's umask decides): safetensors writes its files 0600, which a serving process
    under another user could not read."""
    wanted = reference.stat().st_mode & 0o777
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            mode = path.stat().st_mode & 0o777
            if mode | wanted != mode:
                path.chmod(mode | wanted)


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if missing) for the block: processes (and threads)
    taking the same lock run their blocks one at a time. The lock goes with the process, even a killed one."""
    import fcntl  # POSIX

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _relation(path: Path, other: Path) -> str | None:
    if path == other:
        return "is"
    if other in path.parents:
        return "lies inside"
    if path in other.parents:
        return "contains"
    return None


def check_output_location(
    path: str | Path, what: str, inputs: Mapping[str, str | Path | None], may_contain_inputs: bool = False
) -> None:
    """Refuse an output that is, lies inside or contains one of the ``inputs`` (symlinks resolved), the
    current folder or a folder above it, or a repository root: writing there could change what the user gave.

    ``inputs`` maps a description (``"the model folder"``) to its path; None entries are skipped.
    ``may_contain_inputs``: an output that only adds new files of its own (the score cache) may lie above an input.
    """
    if not str(path).strip():
        raise UsageError(f"{what} is empty: give a path, e.g. runs/<name>")
    resolved = Path(path).expanduser().resolve()
    clashes = [
        (relation, name, source)
        for name, source in inputs.items()
        if source is not None
        and (relation := _relation(resolved, Path(source).expanduser().resolve())) is not None
        and not (relation == "contains" and may_contain_inputs)
    ]
    if clashes:  # the closest one: being an input says more than lying inside the folder that holds it
        relation, name, source = min(clashes, key=lambda clash: ("is", "lies inside", "contains").index(clash[0]))
        raise UsageError(
            f"{what} {path} {relation} {name} ({source}): lightning-prune never writes into, over or around its "
            f"inputs; choose a separate {what}"
        )
    if may_contain_inputs:
        return
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise UsageError(f"{what} {path} is the current folder or one above it: choose a new folder, e.g. runs/<name>")
    if (resolved / ".git").exists():
        raise UsageError(f"{what} {path} is a repository root: choose a new folder, e.g. runs/<name>")


def check_writable(path: str | Path, what: str, in_parent: bool = False) -> None:
    """New files can be created at ``path`` (``in_parent``: next to it): the nearest existing folder at or
    above it accepts a file (tried, not guessed from permission bits, which do not bind root)."""
    existing = Path(path).expanduser().resolve()
    existing = existing.parent if in_parent else existing
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{what} {path}: {existing} is a file, not a folder: choose a folder path")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise UsageError(
            f"{what} {path} cannot be written: {existing} does not accept new files ({error.strerror}); "
            "choose a folder you can write to"
        ) from None


@contextlib.contextmanager
def write_errors_reported(what: str, path: str | Path) -> Iterator[None]:
    """A full disk, an exceeded quota or a folder removed while writing becomes one line naming ``what``; the
    atomic writes inside leave nothing half-written."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, SafetensorError) as error:
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
        raise UsageError(
            f"could not write {what} {path}: {reason}; nothing was written: free some space or choose another place"
        ) from None


def write_json(path: Path, payload: Any, protected: Protected | None = None) -> None:
    with atomic_path(path, protected) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
