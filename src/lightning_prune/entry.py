"""The console entry point and the one dispatcher. ``lightning-prune --help``, ``scorers`` and a command's plain
``--help`` (rendered once by the LightningCLI, then served from a cache keyed by this code, the libraries that
build the parser and the terminal width) are answered without importing Lightning, Transformers or torchmetrics
(seconds of start-up); everything else goes to the LightningCLI in ``cli``."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path

from lightning_prune.commands import COMMANDS, USAGE
from lightning_prune.errors import UsageError

HELP = "\n".join(
    [
        f"usage: {USAGE}",
        "",
        "Task-specific FFN pruning of multi-task language models, without training.",
        "",
        "commands:",
        *(f"  {name:<10}{description}" for name, description in COMMANDS.items()),
        "",
        "options:",
        "  -h, --help  show this help and exit; `lightning-prune <command> --help` for a command's options",
        "  --config CONFIG",
        "              a YAML (or JSON) file of options, e.g. configs/quickstart.yaml",
    ]
)


def list_scorers() -> None:
    """``lightning-prune scorers``: every registered scorer, where it comes from and what it needs.

    A plugin that cannot be used (fails to import, or shares its name with another) is reported on
    stderr and skipped; it only becomes an error when a run chooses it.
    """
    from lightning_prune.scorers import load_scorer_class, scorer_infos

    print(f"{'name':<14}{'distribution':<28}{'version':<10}{'data':<6}{'gradients':<11}labels")
    for name, info in scorer_infos().items():
        try:
            cls = load_scorer_class(name)
        except UsageError as error:
            print(f"lightning-prune: warning: {error}", file=sys.stderr)
            continue
        flags = "".join(
            f"{'yes' if flag else 'no':<{width}}"
            for flag, width in ((cls.needs_data, 6), (cls.needs_gradients, 11), (cls.needs_labels, 6))
        )
        print(f"{name:<14}{info.distribution:<28}{info.version:<10}{flags}".rstrip())


HELP_FLAGS = (["--help"], ["-h"], ["--help-all"])
PARSER_LIBRARIES = ("lightning", "jsonargparse", "transformers", "torch")  # their signatures make the options


def _help_cache_file(argv: list[str]) -> Path:
    """Where the help text of ``argv`` is kept: the key changes with this package's code, the parser's libraries,
    the installed scorer plugins and the terminal width (help is wrapped to it)."""
    from lightning_prune.fingerprint import code_fingerprint

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "missing"

    plugins = sorted(f"{e.name}={e.value}" for e in entry_points(group="lightning_prune.scorers"))
    key = [code_fingerprint(), [installed(n) for n in PARSER_LIBRARIES], plugins, shutil.get_terminal_size(), argv]
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lightning-prune" / "help"
    return root / f"{digest}.txt"


HELP_HEADER = "lightning-prune help sha256="  # the first line of a cached help text: the checksum of the rest


def _cached_help(cached: Path) -> str | None:
    """The help text cached at ``cached``, if that is a regular file whose text matches its checksum (a pipe in its
    place would block, a changed file print garbage)."""
    if cached.is_symlink() or not cached.is_file() or cached.stat().st_size > 1 << 20:
        return None
    with contextlib.suppress(OSError, UnicodeDecodeError):
        header, _, text = cached.read_text(encoding="utf-8").partition("\n")
        if header == HELP_HEADER + hashlib.sha256(text.encode()).hexdigest():
            return text
    return None


def command_help(argv: list[str]) -> None:
    """``lightning-prune <command> --help``: from the cache, or rendered by the LightningCLI and then cached."""
    from lightning_prune.io import atomic_path

    cached = _help_cache_file(argv)
    text = _cached_help(cached)
    if text is not None:
        print(text, end="")
        return
    from lightning_prune.cli import main as cli_main

    rendered, code = io.StringIO(), 0
    with contextlib.redirect_stdout(rendered):
        try:
            cli_main(argv)
        except SystemExit as exit_:
            code = exit_.code
    print(rendered.getvalue(), end="")
    if code not in (0, None):
        sys.exit(code)
    text = rendered.getvalue()
    with contextlib.suppress(OSError), atomic_path(cached, follow_symlinks=False) as tmp:  # unwritable: only slower
        tmp.write_text(f"{HELP_HEADER}{hashlib.sha256(text.encode()).hexdigest()}\n{text}", encoding="utf-8")


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else args
    if argv in ([], ["-h"], ["--help"]):
        print(HELP, file=sys.stdout if argv else sys.stderr)
        if not argv:
            sys.exit(2)
        return
    if argv[:1] == ["scorers"]:
        try:
            list_scorers()
        except UsageError as error:
            print(f"lightning-prune: error: {error}", file=sys.stderr)
            sys.exit(2)
        return
    if argv[:1] in (["fit-free"], ["evaluate"]) and argv[1:] in HELP_FLAGS:
        command_help(argv)
        return
    if argv[:1] == ["export"]:
        from lightning_prune.commands.export import main as export_main

        export_main(argv[1:])
        return
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command is not None and command not in COMMANDS and "--config" not in argv and "-c" not in argv:
        print(
            f"lightning-prune: error: unknown command {command!r}: choose one of {', '.join(COMMANDS)} "
            "(lightning-prune --help)",
            file=sys.stderr,
        )
        sys.exit(2)
    from lightning_prune.cli import main as cli_main

    cli_main(argv)
