"""The ``lightning-prune`` command: a LightningCLI whose subcommands are the functions in ``commands``.

``fit-free`` and ``evaluate`` take ``--model.*`` (``TaskModel``), ``--data.*`` (``TaskDataModule``),
``--trainer.*`` (devices, strategy: DDP for many GPUs) and the command's own options; every option can
also come from YAML (``--config``), and ``--print_config`` shows the resolved configuration.
"""

from __future__ import annotations

import sys
import warnings
from argparse import ArgumentError
from typing import Any

import torch
from lightning import Trainer
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_prune.commands.evaluate import check_output_file, evaluate, user_inputs
from lightning_prune.commands.fit_free import check_request, fit_free
from lightning_prune.data import TaskDataModule
from lightning_prune.errors import UsageError
from lightning_prune.modules import TaskModel

TRAINER_DEFAULTS: dict[str, Any] = {
    "inference_mode": False,  # attribution needs gradients inside trainer.predict
    "logger": False,
    "enable_checkpointing": False,
    "enable_model_summary": False,
    "use_distributed_sampler": False,  # TaskDataModule shards without duplicates itself
    "devices": 1,
}


MAX_SEED = 2**32 - 1  # what seed_everything (numpy) accepts


def check_trainer(accelerator: Any, devices: Any) -> None:
    """The device settings Lightning would reject with a traceback, as one line each."""
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


class PruneCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"fit-free": {"model", "datamodule"}, "evaluate": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.task", "model.task")
        parser.link_arguments("data.labels", "model.labels")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        seed = (self.config[subcommand] if subcommand else self.config).get("seed_everything")
        if not isinstance(seed, bool) and isinstance(seed, int) and not 0 <= seed <= MAX_SEED:
            raise UsageError(f"seed_everything {seed} is outside 0..{MAX_SEED} (numpy's seed range): choose one in it")

    def before_instantiate_classes(self) -> None:
        """Every check that needs no model: settings, trainer, outputs (they must not touch any input)."""
        if self.subcommand is None:
            return
        c = self.config[self.subcommand]
        check_trainer(c.trainer.accelerator, c.trainer.devices)
        inputs = user_inputs(c.model.path, c.data.data_dir, c.data.score_file, c.data.eval_file)
        if self.subcommand == "fit-free":
            check_request(
                c.scorer,
                c.scorer_options,
                c.labels,
                c.sparsity,
                c.scope,
                c.min_keep,
                c.output_dir,
                c.overwrite,
                c.cache_dir,
                inputs,
            )
        elif c.output_file is not None:
            check_output_file(c.output_file, c.overwrite, inputs)

    def after_instantiate_classes(self) -> None:
        if self.subcommand is not None:
            parser = self._parser(self.subcommand)
            self.trainer.resolved_config = parser.dump(self.config[self.subcommand], skip_none=False)


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
    # Scoring returns nothing from predict_step on purpose; Lightning's own pytree deprecation is not ours.
    warnings.filterwarnings("ignore", message=r".*predict returned None.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    try:
        if argv[:1] == ["scorers"]:
            list_scorers()
            return
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
                "exit_on_error": False,  # parse errors become one line, below
                **{name: {"exit_on_error": False} for name in PruneCLI.subcommands()},
            },
            args=args,
        )
    except UsageError as error:
        print(f"lightning-prune: error: {error}", file=sys.stderr)
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
