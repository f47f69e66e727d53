"""LoRA adapters as model input: merged into the base at load, for every model kind; the saved model is plain."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import digest, fit_free_args, one_error_line, run_cli
from lightning_prune import load_model
from lightning_prune.errors import UsageError
from lightning_prune.tasks import TASKS, load_split

peft = pytest.importorskip("peft")

# model kind -> (the Hugging Face class the adapter is trained on, its LoRA target modules)
TARGETS = {
    "bert": ("AutoModel", ["query", "value", "intermediate.dense", "output.dense"]),
    "t5": ("AutoModelForSeq2SeqLM", ["q", "v", "wi", "wo"]),
    "llama": ("AutoModelForCausalLM", ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]),
}


def make_adapter(base: Path, kind: str, out: Path, seed: int = 1) -> Path:
    """A LoRA adapter for ``base`` with random (non-zero) weights, as PEFT saves it."""
    import transformers

    loader, targets = TARGETS[kind]
    torch.manual_seed(seed)
    model = getattr(transformers, loader).from_pretrained(base)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    peft.get_peft_model(model, config).save_pretrained(out)
    return out


def merged_reference(base: Path, kind: str, adapter: Path) -> dict[str, torch.Tensor]:
    """What PEFT itself makes of base + adapter, merged."""
    import transformers

    model = getattr(transformers, TARGETS[kind][0]).from_pretrained(base)
    return peft.PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().state_dict()


@pytest.mark.parametrize("kind", ["bert", "t5", "llama"])
def test_adapter_is_merged_into_every_model_kind(kind, request, glue_dir, tmp_path):
    base = request.getfixturevalue(f"{kind}_dir")
    adapter = make_adapter(base, kind, tmp_path / "adapter")
    plain, adapted = load_model(base, TASKS["sst2"]), load_model(base, TASKS["sst2"], adapter=adapter)
    reference = merged_reference(base, kind, adapter)
    state = adapted.weights_module.state_dict()
    assert not any("lora" in name for name in state)  # a plain model again
    for name, tensor in reference.items():
        torch.testing.assert_close(state[name], tensor)
    batch = adapted.collate(load_split(TASKS["sst2"], "validation", glue_dir)[:6])
    with torch.no_grad():
        adapted_answer = adapted.target_log_prob(batch, batch["labels"])
        assert not torch.allclose(adapted_answer, plain.target_log_prob(batch, batch["labels"]))


def test_fit_free_with_adapter_saves_a_merged_plain_model(llama_dir, glue_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    adapter = make_adapter(llama_dir, "llama", tmp_path / "adapter")
    before = digest(adapter, llama_dir)
    out = tmp_path / "run"
    code, _, err = run_cli(fit_free_args(llama_dir, glue_dir, out, "--model.adapter", str(adapter)), capsys)
    assert code == 0, err
    assert digest(adapter, llama_dir) == before
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["adapter"] == str(adapter)
    # The dense metrics are those of the merged model: evaluate with the adapter agrees.
    code, _, err = run_cli(
        ["evaluate", "--model.path", str(llama_dir), "--model.adapter", str(adapter), "--data.task", "sst2",
         "--data.data_dir", str(glue_dir), "--output_file", str(tmp_path / "eval.json"),
         "--trainer.enable_progress_bar", "false"], capsys,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "eval.json").read_text())["metrics"] == pytest.approx(metrics["dense_metrics"])
    # Plain transformers loads the pruned, merged model (no PEFT, no LoRA weights) and agrees with our loader.
    plain = AutoModelForCausalLM.from_pretrained(out / "model")
    assert not any("lora" in name for name in plain.state_dict())
    ours = load_model(out / "model", TASKS["sst2"])
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, ours.model(input_ids=ids).logits)


def _rewrite_weights(adapter: Path, change) -> None:
    file = adapter / "adapter_model.safetensors"
    save_file(change(load_file(str(file))), str(file))


def _rename_first(tensors: dict) -> dict:
    first = sorted(tensors)[0]
    return {(k.replace("layers.0.", "layers.7.") if k == first else k): v for k, v in tensors.items()}


def _reshape_first(tensors: dict) -> dict:
    first = sorted(tensors)[0]
    return {k: (torch.zeros(v.shape[0], v.shape[1] + 1) if k == first else v) for k, v in tensors.items()}


def _config(adapter: Path, **changes) -> None:
    file = adapter / "adapter_config.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), **changes}))


BAD_ADAPTERS = {
    "missing folder": (lambda a: __import__("shutil").rmtree(a), "is not a folder"),
    "no config": (lambda a: (a / "adapter_config.json").unlink(), "has no adapter_config.json"),
    "damaged config": (lambda a: (a / "adapter_config.json").write_text("{"), "is damaged"),
    "not LoRA": (lambda a: _config(a, peft_type="IA3"), "is a IA3 adapter, not LoRA"),
    "no weights": (lambda a: (a / "adapter_model.safetensors").unlink(), "lacks adapter_model.safetensors"),
    "pickled weights only": (
        lambda a: (a / "adapter_model.safetensors").rename(a / "adapter_model.bin"),
        "a pickle this tool does not load",
    ),
    "damaged weights": (lambda a: (a / "adapter_model.safetensors").write_bytes(b"\0" * 64), "are damaged"),
    "modules the base lacks": (lambda a: _config(a, target_modules=["nonexistent_proj"]), "does not fit the model"),
    "weights of other layers": (lambda a: _rewrite_weights(a, _rename_first), "1 missing, 1 unexpected weights"),
    "weights of another shape": (lambda a: _rewrite_weights(a, _reshape_first), "does not fit the model"),
}


@pytest.mark.parametrize("case", sorted(BAD_ADAPTERS))
def test_bad_adapter_is_one_line_and_writes_nothing(case, llama_dir, glue_dir, tmp_path, capsys):
    adapter = make_adapter(llama_dir, "llama", tmp_path / "adapter")
    damage, message = BAD_ADAPTERS[case]
    damage(adapter)
    watched = [adapter, llama_dir, glue_dir]
    before = digest(*watched)
    out = tmp_path / "run"
    code, _, err = run_cli(fit_free_args(llama_dir, glue_dir, out, "--model.adapter", str(adapter)), capsys)
    assert code == 2
    assert message in one_error_line(err)
    assert digest(*watched) == before
    assert not out.exists()


def test_adapter_on_a_pruned_model_is_refused(llama_dir, glue_dir, tmp_path, capsys):
    adapter = make_adapter(llama_dir, "llama", tmp_path / "adapter")
    code, _, err = run_cli(fit_free_args(llama_dir, glue_dir, tmp_path / "run"), capsys)
    assert code == 0, err
    with pytest.raises(UsageError, match="is a pruned model; a LoRA adapter fits the dense model"):
        load_model(tmp_path / "run" / "model", TASKS["sst2"], adapter=adapter)


def test_output_inside_the_adapter_folder_is_refused(llama_dir, glue_dir, tmp_path, capsys):
    adapter = make_adapter(llama_dir, "llama", tmp_path / "adapter")
    before = digest(adapter)
    args = fit_free_args(llama_dir, glue_dir, adapter / "run", "--model.adapter", str(adapter))
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert "lies inside the LoRA adapter folder" in one_error_line(err)
    assert digest(adapter) == before


def test_missing_peft_is_one_line(llama_dir, glue_dir, tmp_path, capsys, monkeypatch):
    adapter = make_adapter(llama_dir, "llama", tmp_path / "adapter")
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now raises ImportError
    args = fit_free_args(llama_dir, glue_dir, tmp_path / "run", "--model.adapter", str(adapter))
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert "pip install 'lightning-prune[lora]'" in one_error_line(err)


COMMITTED_ADAPTER = Path(__file__).resolve().parents[1] / "models" / "smollm2-glue-multitask-lora"


def test_committed_multitask_adapter_fits_smollm2_and_its_config():
    """The committed adapter is a float16 LoRA over every projection of SmolLM2-135M's 30 layers (hidden 576, FFN
    1536), named by the committed config; checked without loading the base (fast)."""
    import yaml

    from lightning_prune.lora import check_adapter_folder

    folder, weights_file = check_adapter_folder(COMMITTED_ADAPTER)
    config = json.loads((folder / "adapter_config.json").read_text())
    rank = config["r"]
    weights = load_file(str(weights_file))
    assert {w.dtype for w in weights.values()} == {torch.float16}
    widths = {"q_proj": (576, 576), "k_proj": (576, 192), "v_proj": (576, 192), "o_proj": (576, 576),
              "gate_proj": (576, 1536), "up_proj": (576, 1536), "down_proj": (1536, 576)}  # fmt: skip
    assert len(weights) == 30 * len(widths) * 2
    for name, tensor in weights.items():
        module = next(m for m in widths if f".{m}." in name)
        given, produced = widths[module]
        assert tuple(tensor.shape) == ((rank, given) if "lora_A" in name else (produced, rank)), name
    run = yaml.safe_load((folder.parents[1] / "configs" / "smollm2_multitask_sst2.yaml").read_text())
    assert (folder.parents[1] / run["model"]["adapter"]).resolve() == folder.resolve()
