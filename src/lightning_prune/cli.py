"""The ``lightning-prune`` command: a LightningCLI whose subcommands are the functions in ``commands``.

``fit-free`` and ``evaluate`` take ``--model.*`` (``TaskModel``), ``--data.*`` (``TaskDataModule``),
``--trainer.*`` (devices, strategy: DDP for many GPUs) and the command's own options; every option can
also come from YAML (``--config``), and ``--print_config`` shows the resolved configuration.
"""

from __future__ import annotations

import logging
import signal
import sys
import warnings
from argparse import SUPPRESS, ArgumentError
from typing import Any

import torch
from lightning import Trainer
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_prune.commands import USAGE
from lightning_prune.commands.evaluate import check_output_file, evaluate
from lightning_prune.commands.fit_free import fit_free
from lightning_prune.data import TaskDataModule
from lightning_prune.errors import NothingChosen, Terminated, UsageError
from lightning_prune.lora import check_adapter_folder, require_peft
from lightning_prune.modules import StopOnSignal, TaskModel
from lightning_prune.pipeline import FitFreeSettings
from lightning_prune.pipeline.check import check_request, user_inputs
from lightning_prune.scorers import accepted_options
from lightning_prune.signals import stopping_on_signals
from lightning_prune.tasks import require_hub

TRAINER_DEFAULTS: dict[str, Any] = {
    "inference_mode": False,  # attribution needs gradients inside trainer.predict
    "logger": False,
    "enable_checkpointing": False,
    "enable_model_summary": False,
    "use_distributed_sampler": False,  # TaskDataModule shards without duplicates itself
    "devices": 1,
    "callbacks": [StopOnSignal()],  # LightningCLI adds them to the user's callbacks
}


MAX_SEED = 2**32 - 1  # what seed_everything (numpy) accepts


def check_trainer(accelerator: Any, devices: Any, limits: dict[str, Any] | None = None) -> None:
    """The device settings Lightning would reject with a traceback, as one line each; ``limits``
    (``limit_test_batches``, ``limit_predict_batches``) of 0, which would evaluate or score nothing."""
    for name, value in (limits or {}).items():
        if value is not None and not isinstance(value, bool) and float(value) == 0:
            raise UsageError(f"--trainer.{name} 0 runs no batch at all: drop it, or give a number or fraction above 0")
    if str(accelerator) in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UsageError(
            f"--trainer.accelerator {accelerator}: no GPU is visible to torch on this machine; "
            "use --trainer.accelerator cpu (or auto)"
        )
    text = str(devices).strip()
    if text.lstrip("-").isdigit() and int(text) < 1 and int(text) != -1:
        raise UsageError(f"--trainer.devices {devices}: give a positive number of devices, -1 (all) or auto")


class PruneTrainer(Trainer):
    """A Trainer whose extra entry points are the training-free commands."""

    resolved_config: str | None = None  # written next to the results by fit-free
    fit_free = fit_free
    evaluate = evaluate


# Subcommand names are looked up as Trainer attributes; the user-facing name has a hyphen.
setattr(PruneTrainer, "fit-free", fit_free)


# Trainer options a training-free run may want; ``--help`` folds the other ~40 (``--help-all`` shows them).
TRAINER_OPTIONS_SHOWN = ("accelerator", "devices", "strategy", "num_nodes", "precision", "enable_progress_bar")


def _given(argv: list[str], option: str) -> bool:
    return any(arg == option or arg.startswith(option + "=") for arg in argv)


class PruneCLI(LightningCLI):
    """``fold_trainer_help``: ``--help`` shows the command's options first and only a few Trainer ones.
    ``command_line``: the arguments as typed, to tell which options the user gave there (not in a config)."""

    def __init__(self, *args: Any, fold_trainer_help: bool = True, command_line: list[str] = (), **kwargs: Any):
        self.fold_trainer_help = fold_trainer_help
        self.command_line = list(command_line)
        super().__init__(*args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"fit-free": {"model", "datamodule"}, "evaluate": {"model", "datamodule"}}

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        kwargs.setdefault("usage", f"lightning-prune {subcommand} [--config FILE] [options]")
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        own = set(self._subcommand_method_arguments[subcommand])
        groups = parser._action_groups
        command = next(g for g in groups if own & {a.dest for a in g._group_actions})
        trainer = next(g for g in groups if any(a.dest == "trainer.accelerator" for a in g._group_actions))
        groups.remove(command)
        groups.insert(2, command)  # after the positionals and --config, before model and data
        groups.remove(trainer)
        groups.append(trainer)
        command.title = f"{subcommand}: {command.title}"
        trainer.title = "Lightning Trainer: devices, precision, distributed runs"
        if self.fold_trainer_help:
            # dests: "trainer" (a Trainer config file), "trainer.<option>", "trainer.<option>.help"
            folded = [
                a for a in trainer._group_actions if a.dest.count(".") != 1 or a.dest[8:] not in TRAINER_OPTIONS_SHOWN
            ]
            for action in folded:
                action.help = SUPPRESS
            trainer.description = (
                f"{sum(a.dest.count('.') == 1 for a in folded)} more Trainer options are folded (most are about "
                f"training and do not apply): `lightning-prune {subcommand} --help-all` shows them."
            )
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.task", "model.task")
        parser.link_arguments("data.labels", "model.labels")
        parser.link_arguments(
            "data", "model.demonstrations", compute_fn=TaskDataModule.demonstration_examples, apply_on="instantiate"
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        seed = (self.config[subcommand] if subcommand else self.config).get("seed_everything")
        if not isinstance(seed, bool) and isinstance(seed, int) and not 0 <= seed <= MAX_SEED:
            raise UsageError(f"seed_everything {seed} is outside 0..{MAX_SEED} (numpy's seed range): choose one in it")

    def before_instantiate_classes(self) -> None:
        """Every check that needs no model: settings, trainer, outputs (they must not touch any input), data source."""
        if self.subcommand is None:
            return
        c = self.config[self.subcommand]
        limits = {name: c.trainer.get(name) for name in ("limit_test_batches", "limit_predict_batches")}
        check_trainer(c.trainer.accelerator, c.trainer.devices, limits)
        data = c.data
        inputs = user_inputs(
            c.model.path, data.data_dir, data.score_file, data.eval_file, data.selection_file, c.model.adapter
        )
        if c.model.adapter is not None:
            check_adapter_folder(c.model.adapter)
            require_peft()
        if self.subcommand == "fit-free":
            if _given(self.command_line, "--scorer") and not _given(self.command_line, "--scorer_options"):
                c.scorer_options = self._options_of_new_scorer(c.scorer, c.scorer_options)
            check_request(FitFreeSettings.from_namespace(c), inputs)
        elif c.output_file is not None:
            check_output_file(c.output_file, c.overwrite, inputs)
        reads_scoring_data = self.subcommand == "fit-free" or data.demonstrations
        files = (data.eval_file, data.score_file) if reads_scoring_data else (data.eval_file,)
        if data.data_dir is None and None in files:
            require_hub("--data.data_dir")  # before the model loads, not after 40 s of retries

    @staticmethod
    def _options_of_new_scorer(scorer: str, options: dict[str, Any] | None) -> dict[str, Any] | None:
        """Scorer options belong to their scorer: a ``--scorer`` typed on the command line over a config keeps
        only the config's options that the new scorer takes (like a class path resetting its init args)."""
        if not options:
            return options
        names, takes_any = accepted_options(scorer)
        if takes_any:
            return options
        kept = {name: value for name, value in options.items() if name in names}
        dropped = sorted(set(options) - set(kept))
        if dropped:
            print(
                f"lightning-prune: note: scorer {scorer!r} does not take {', '.join(dropped)} "
                "(options of the config's scorer); they are dropped",
                file=sys.stderr,
            )
        return kept

    def after_instantiate_classes(self) -> None:
        if self.subcommand is not None:
            parser = self._parser(self.subcommand)
            self.trainer.resolved_config = parser.dump(self.config[self.subcommand], skip_none=False)


SWEPT_OPTIONS = ("--sparsity", "--target_speedup")


def normalize_arguments(argv: list[str]) -> list[str]:
    """``--sparsity 0.1,0.3,0.5`` (or ``=``; ``--target_speedup`` too) becomes the list ``[0.1,0.3,0.5]`` that the
    parser reads."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith(tuple(f"{option}=" for option in SWEPT_OPTIONS)):
            name, value = arg.split("=", 1)
        elif i > 0 and out[i - 1] in SWEPT_OPTIONS:
            name, value = None, arg
        else:
            continue
        if "," in value and not value.lstrip().startswith("["):
            value = f"[{value}]"
        out[i] = f"{name}={value}" if name else value
    return out


def _drop_noise(record: logging.LogRecord) -> bool:
    """Lightning's "💡 Tip: install litlogger ...", "Seed set to 0" (the seed is in config.yaml; an error after it
    would no longer be the one line it should be) and "Received SIGTERM" (the stop's own line says it)."""
    message = str(record.msg)
    return not (message.startswith(("💡 Tip", "Seed set to")) or "Received SIGTERM" in message)


EXIT_NOTHING_CHOSEN = 3  # a --max_drop sweep that saved no model: finished, but without what was asked for


def _stopped(signal_name: str) -> None:
    """The one line and exit code of a run stopped by a signal."""
    number = getattr(signal, signal_name, signal.SIGINT)
    how = "SIGINT (Ctrl-C)" if number == signal.SIGINT else signal_name
    print(
        f"lightning-prune: stopped by {how}; nothing was written. Run the same command again: scoring resumes from "
        "its saved progress",
        file=sys.stderr,
    )
    sys.exit(128 + number)


def _run_cli(argv: list[str], help_all: bool) -> None:
    """The LightningCLI over ``argv``, with SIGTERM and Ctrl-C stopping it within moments (``signals``)."""
    with stopping_on_signals():
        PruneCLI(
            TaskModel,
            TaskDataModule,
            trainer_class=PruneTrainer,
            trainer_defaults=TRAINER_DEFAULTS,
            save_config_callback=None,
            seed_everything_default=0,
            auto_configure_optimizers=False,
            parser_kwargs={
                "description": "Task-specific FFN pruning without training. "
                "`lightning-prune scorers` lists the installed scorers.",
                "usage": USAGE,
                "exit_on_error": False,  # parse errors become one line, below
                **{name: {"exit_on_error": False} for name in PruneCLI.subcommands()},
            },
            args=argv,
            fold_trainer_help=not help_all,
            command_line=argv,
        )


def main(args: list[str] | None = None) -> None:
    argv = normalize_arguments(sys.argv[1:] if args is None else args)
    # Scoring returns nothing from predict_step on purpose; Lightning's own pytree deprecation is not ours.
    warnings.filterwarnings("ignore", message=r".*predict returned None.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*LightningCLI's args parameter is intended.*")  # argv normalized
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning.fabric.utilities.seed",
        "lightning.pytorch.trainer.connectors.signal_connector",
    ):
        logging.getLogger(name).addFilter(_drop_noise)
    help_all = "--help-all" in argv
    argv = ["--help" if arg == "--help-all" else arg for arg in argv]
    try:
        _run_cli(argv, help_all)
    except Terminated as stop:
        _stopped(str(stop))
    except KeyboardInterrupt:  # Ctrl-C before the handlers were in place
        _stopped("SIGINT")
    except NothingChosen:
        sys.exit(EXIT_NOTHING_CHOSEN)
    except ValueError as error:  # UsageError, also raised inside a jsonargparse link (data -> model.demonstrations)
        usage = error if isinstance(error, UsageError) else error.__cause__
        if not isinstance(usage, UsageError):
            raise
        print(f"lightning-prune: error: {usage}", file=sys.stderr)
        sys.exit(2)
    except (ArgumentError, MisconfigurationException) as error:
        # jsonargparse: unknown option or config key, wrong type, ...; Lightning: a trainer setting it rejects
        message = " ".join(str(error).split())
        command = next((a for a in argv if a in PruneCLI.subcommands()), "")
        print(
            f"lightning-prune: error: {message} (see: lightning-prune {command} --help)".replace("  ", " "),
            file=sys.stderr,
        )
        sys.exit(2)
