"""The console entry point. ``lightning-prune --help`` and ``lightning-prune scorers`` are answered here,
without importing Lightning, Transformers or torchmetrics (seconds of start-up); everything else goes
to the LightningCLI in ``cli``."""

from __future__ import annotations

import sys

from lightning_prune.errors import UsageError

USAGE = "lightning-prune [-h] [--config CONFIG] {fit-free,evaluate,scorers} ..."
# The first docstring line of each command function (tests keep them equal).
COMMANDS = {
    "fit-free": "Prune the task's least important FFN neurons and save the smaller model.",
    "evaluate": "Evaluate the model on the task's evaluation examples.",
    "scorers": "List the installed scorers, their distribution and what they need.",
}
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


def normalize_arguments(argv: list[str]) -> list[str]:
    """``--sparsity 0.1,0.3,0.5`` (or ``=``) becomes the list ``[0.1,0.3,0.5]`` that the parser reads."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--sparsity="):
            name, value = arg.split("=", 1)
        elif i > 0 and out[i - 1] == "--sparsity":
            name, value = None, arg
        else:
            continue
        if "," in value and not value.lstrip().startswith("["):
            value = f"[{value}]"
        out[i] = f"{name}={value}" if name else value
    return out


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
    from lightning_prune.cli import main as cli_main

    cli_main(argv)
