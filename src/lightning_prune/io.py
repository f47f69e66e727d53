"""Outputs that never touch inputs: checked before the work, written atomically, replaced only if ours.

Every file and the run directory appear complete or not at all (written under a temporary name, then
renamed). A run directory carries ``MARKER_FILE``, which lists every file the run wrote; ``overwrite`` replaces
only a folder that carries it and holds nothing else, so no option can replace or delete what lightning-prune did
not write. Cache entries are written over a symlink, never through it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lightning_prune.errors import UsageError

MARKER_FILE = ".lightning-prune-output"
MARKER_TEXT = "Written by lightning-prune: `--overwrite true` may replace this folder (only folders with this file).\n"


def _target(final: Path, follow_symlinks: bool = True) -> Path:
    """Where ``final`` really is: a symlink is followed, so the link stays and its target is written; without
    ``follow_symlinks`` (cache entries) the link itself is what gets replaced."""
    final = Path(final).expanduser()
    return final.resolve() if follow_symlinks and final.is_symlink() else final


Protected = Mapping[str, "str | Path | None"]  # what a run reads, by description (see check_output_location)


@contextlib.contextmanager
def atomic_path(final: Path, protected: Protected | None = None, follow_symlinks: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of ``final`` to write; rename it into place only if the block succeeds.
    ``protected``: the run's inputs, which the clean-up of killed runs' leftovers never touches.
    ``follow_symlinks``: false for cache entries, whose name a symlink must not redirect to another file."""
    final = _target(final, follow_symlinks)
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
    ``final``: what they were writing, and an old ``final`` one was replacing (with the user's ``--overwrite``) when
    it died between the two renames; it is never put back in place of a ``final`` the user may have deleted since.
    A leftover that is, holds or lies inside one of the ``protected`` inputs is left alone: a user may prune from a
    folder that a killed sweep left behind."""
    for leftover in sorted(final.parent.glob(f".{final.name}.*-*")):
        kind, _, pid = leftover.name.rpartition("-")
        if not (kind.endswith((".tmp", ".old", ".probe", ".probe2")) and pid.isdigit()) or _pid_alive(int(pid)):
            continue
        if _touches(leftover, protected):
            continue
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def is_own_output(folder: Path) -> bool:
    """Whether ``folder`` is a run folder lightning-prune wrote (it carries the marker file)."""
    return (Path(folder) / MARKER_FILE).is_file()


def written_files(folder: Path) -> set[str] | None:
    """The files (relative paths) the marker of run folder ``folder`` lists: what lightning-prune wrote there;
    None for a marker without the list (earlier versions) or an unreadable one."""
    try:
        lines = (Path(folder) / MARKER_FILE).read_text(encoding="utf-8").splitlines()
        files = json.loads(lines[1])["files"] if len(lines) > 1 else None
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    return set(files) if isinstance(files, list) and all(isinstance(f, str) for f in files) else None


def _foreign_entries(folder: Path) -> list[str]:
    """What lies in ``folder`` besides the files its marker lists (and the folders holding them)."""
    listed = written_files(folder)
    if listed is None:
        return []
    keep = listed | {MARKER_FILE} | {str(parent) for f in listed for parent in Path(f).parents if str(parent) != "."}
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if str(p.relative_to(folder)) not in keep)


def check_replaceable(final: Path, overwrite: bool, what: str = "output_dir") -> None:
    """``final`` is free (missing or empty), or ``overwrite`` is set and it is a folder lightning-prune wrote that
    holds only what it wrote."""
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
    if written_files(final) is None:
        raise UsageError(
            f"{what} {final} was written by an earlier lightning-prune that did not list its files, so --overwrite "
            "cannot tell them from yours: delete the folder yourself, or choose another folder"
        )
    foreign = _foreign_entries(final)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UsageError(
            f"{what} {final} holds what lightning-prune did not write ({shown}); --overwrite only replaces its own "
            "files: move those out, or choose another folder"
        )


@contextlib.contextmanager
def atomic_directory(
    final: Path, overwrite: bool = False, protected: Protected | None = None, cache_entry: bool = False
) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces ``final`` once the block succeeds, with the marker file
    listing what the block wrote; an existing ``final`` is replaced only if ``check_replaceable`` allows it.
    ``protected``: as for ``atomic_path``. ``cache_entry``: ``final`` is a cache's own entry: replaced whatever it
    holds, and a symlink in its place is replaced, never followed."""
    final = _target(final, follow_symlinks=not cache_entry)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(final, protected)
    tmp = _temporary_name(final, "tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if not p.is_dir())
        (tmp / MARKER_FILE).write_text(MARKER_TEXT + json.dumps({"files": files}) + "\n")
        _readable_like(tmp, tmp / MARKER_FILE)
        if not cache_entry:
            check_replaceable(final, overwrite)  # again: someone may have filled it while this run worked
        _move_into_place(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` is moved aside first and deleted once ``tmp`` is in."""
    if final.is_symlink():
        final.unlink()
    elif final.is_dir() and not any(final.iterdir()):
        final.rmdir()
    if final.exists():
        old = _temporary_name(final, "old")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


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


def check_renameable(path: str | Path, what: str) -> None:
    """An output is written next to ``path`` and renamed into place: refuse, before the work, a ``path`` that is a
    mount point (a container's ``-v host:/out``: it cannot be renamed) or a folder where nothing can be renamed."""
    final = Path(path).expanduser()
    if final.exists() and os.path.ismount(final.resolve()):  # resolved: a symlinked output is replaced at its target
        inside = f"give a path inside it, e.g. {final / 'run'}" if final.is_dir() else "mount its folder instead"
        raise UsageError(
            f"{what} {path} is a mount point: outputs are written beside it and renamed into place, which a mount "
            f"point cannot be; {inside}"
        )
    parent = final.resolve().parent
    while not parent.exists():
        parent = parent.parent
    probe, renamed = (_temporary_name(parent / final.name, kind) for kind in ("probe", "probe2"))
    try:  # named like a temporary: a run killed in between leaves what the next one cleans up
        probe.mkdir()
        try:
            os.replace(probe, renamed)
        finally:
            (renamed if renamed.exists() else probe).rmdir()
    except OSError as error:
        raise UsageError(
            f"{what} {path}: {parent} does not let files be created and renamed ({error.strerror}), and outputs "
            "are renamed into place: choose another folder"
        ) from None


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


NOT_FINITE_KEY = "null_because_not_finite"  # where strict JSON says which values were NaN or infinite


def _finite(value: Any, where: str, replaced: list[str]) -> Any:
    """``value`` with every NaN or infinite float replaced by None (its path noted in ``replaced``)."""
    if isinstance(value, float) and not math.isfinite(value):
        replaced.append(where)
        return None
    if isinstance(value, dict):
        return {key: _finite(item, f"{where}.{key}" if where else str(key), replaced) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item, f"{where}[{i}]", replaced) for i, item in enumerate(value)]
    return value


def write_json(path: Path, payload: Any, protected: Protected | None = None) -> None:
    """``payload`` as strict JSON (a NaN is not JSON): a value that is not a finite number is written as null, and
    a top-level ``NOT_FINITE_KEY`` lists where, e.g. a correlation of a model that answers every example alike."""
    replaced: list[str] = []
    strict = _finite(payload, "", replaced)
    if replaced and isinstance(strict, dict):
        strict[NOT_FINITE_KEY] = {where: "not a number: undefined on these examples" for where in replaced}
    with atomic_path(path, protected) as tmp:
        tmp.write_text(json.dumps(strict, indent=2, sort_keys=False, allow_nan=False) + "\n")
