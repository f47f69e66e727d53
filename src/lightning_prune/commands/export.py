"""``lightning-prune export``: a decoder LM (a folder lightning-prune wrote or read, dense or pruned, a ``.gguf`` file
or ``pkg:`` reference, with or without a LoRA adapter) as one GGUF file that llama.cpp and its front ends run.

Not a Lightning command: it needs no task, no data and no Trainer, so it has a parser of its own (the same
``--model.path`` and ``--model.adapter`` as the other commands), answered without loading Lightning."""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lightning_prune.errors import UsageError
from lightning_prune.export.dtypes import GGUFDtype


def export(model_path: str, output_file: str, dtype: GGUFDtype = "f16", adapter: str | None = None,
           overwrite: bool = False) -> str:  # fmt: skip
    """Export a decoder LM to one GGUF file that llama.cpp runs.

    Args:
        model_path: a decoder LM folder (dense, or one fit-free wrote: uneven widths become llama.cpp's deci
            architecture), a ``.gguf`` file or a ``pkg:`` reference.
        output_file: the ``.gguf`` file to write (never an input; an existing one only with ``overwrite``, and only
            if lightning-prune exported it).
        dtype: f16, q8_0 (8-bit blocks: about half of f16's size) or f32.
        adapter: a PEFT LoRA adapter folder trained on the (dense) model, merged in first: the dense model as the
            pruned one will run, to compare in the same runtime.
        overwrite: replace an ``output_file`` lightning-prune exported before.

    Returns the line the command prints.
    """
    from lightning_prune.sources import require_gguf_extra

    require_gguf_extra("writing a .gguf file")
    from lightning_prune.adapters import model_inputs
    from lightning_prune.export.gguf import export_gguf
    from lightning_prune.io import write_errors_reported

    check_export_output(output_file, overwrite, model_inputs(model_path, adapter))
    with (
        _decoder_folder(model_path, adapter) as (folder, tokenizer_source),
        write_errors_reported("output_file", output_file),
    ):
        report = export_gguf(folder, Path(output_file).expanduser(), dtype, tokenizer_source)
    widths = sorted(set(report.ffn_widths))
    shape = f"FFN {widths[0]}" if len(widths) == 1 else f"FFN {widths[0]}-{widths[-1]} per layer"
    return (
        f"wrote {report.output_file} ({report.architecture}, {report.dtype}, {shape}, "
        f"{report.file_bytes / 2**20:.0f} MiB, tokenizer {report.tokenizer}) in {report.seconds:.0f} s"
    )


def check_export_output(output_file: str, overwrite: bool, inputs: dict) -> None:
    """Refuse, before any work, an output that is an input, not a ``.gguf`` name, or a file lightning-prune did not
    export (or any existing file without ``overwrite``)."""
    from lightning_prune.export.gguf import GGUF_SUFFIX, exported_by_lightning_prune
    from lightning_prune.io import check_output_location, check_writable

    check_output_location(output_file, "output_file", inputs)
    path = Path(output_file).expanduser()
    if path.suffix != GGUF_SUFFIX:
        raise UsageError(f"output_file {path} does not end in {GGUF_SUFFIX}: name the GGUF file *.gguf")
    if path.exists() and not path.is_file():
        raise UsageError(f"output_file {path} is not a regular file (a folder, device or pipe): give a file path")
    if path.exists() and not overwrite:
        raise UsageError(f"output_file {path} exists: choose another file, or pass --overwrite true to replace it")
    if path.exists() and not exported_by_lightning_prune(path):
        raise UsageError(
            f"output_file {path} was not exported by lightning-prune; --overwrite only replaces its own exports: "
            "choose another file"
        )
    check_writable(path, "output_file", in_parent=True)


@contextlib.contextmanager
def _decoder_folder(model_path: str, adapter: str | None) -> Iterator[tuple[Path, Path | None]]:
    """The model's Hugging Face folder (with the adapter merged in, in a temporary one) and the GGUF whose tokenizer
    travels with it: a ``.gguf`` input's own (llama.cpp's reading of it, kept as it was)."""
    from lightning_prune.adapters.load import open_source
    from lightning_prune.export.gguf import gguf_family
    from lightning_prune.sources import gguf_input

    source = open_source(model_path, adapter)
    if not source.is_folder:
        raise UsageError(f"{model_path} is not a local model: export reads a folder, a .gguf file or a pkg: reference")
    text_config = source.config.get_text_config() if hasattr(source.config, "get_text_config") else source.config
    gguf_family(text_config.model_type, source.config.model_type)
    tokenizer_source = gguf_input(model_path)
    if adapter is None:
        yield source.folder, tokenizer_source
        return
    with tempfile.TemporaryDirectory(prefix="lightning-prune-merged-") as tmp:
        _save_merged(source, Path(tmp))
        yield Path(tmp), tokenizer_source


def _save_merged(source, folder: Path) -> None:
    """The dense model with its LoRA adapter merged in, saved as a plain folder."""
    from transformers import AutoModelForCausalLM

    from lightning_prune.adapters.hf import load_hf, load_tokenizer

    merged = load_hf(AutoModelForCausalLM, source.path, None, source.adapter, source.given)
    merged.save_pretrained(folder)
    load_tokenizer(source.path).save_pretrained(folder)


def parser():
    """``export``'s options (a jsonargparse parser, as the other commands', without Lightning)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog="lightning-prune export",
        description=export.__doc__.split("\n\n")[0] if export.__doc__ else None,
        exit_on_error=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML (or JSON) file of these options")
    parser.add_argument("--model.path", required=True, help=_help("model_path"))
    parser.add_argument("--model.adapter", type=str | None, default=None, help=_help("adapter"))
    parser.add_argument("--output_file", required=True, help=_help("output_file"))
    parser.add_argument("--dtype", type=GGUFDtype, default="f16", help=_help("dtype"))
    parser.add_argument("--overwrite", type=bool, default=False, help=_help("overwrite"))
    return parser


def _help(name: str) -> str:
    """The ``Args`` text of ``export``'s parameter ``name`` (declared once, there)."""
    text = (export.__doc__ or "").split(f"{name}: ", 1)[1]
    lines = [text.splitlines()[0]]
    for line in text.splitlines()[1:]:
        if not line.startswith("            "):
            break
        lines.append(line.strip())
    return " ".join(lines)


def main(argv: list[str]) -> None:
    """``lightning-prune export ...``: one line on success, one error line and exit 2 on bad input."""
    from argparse import ArgumentError

    try:
        options = parser().parse_args(argv)
        print(export(options.model.path, options.output_file, options.dtype, options.model.adapter, options.overwrite))
    except (UsageError, ArgumentError) as error:
        print(f"lightning-prune: error: {' '.join(str(error).split())} (see: lightning-prune export --help)",
              file=sys.stderr)  # fmt: skip
        sys.exit(2)
