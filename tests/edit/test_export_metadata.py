"""LoRA files other tools label right (kohya's ss_* metadata, read by A1111's rule), exports and applies at a
strength, and files written by locoedit 0.1 that still load."""

import json

import pytest
import torch

torch.set_num_threads(1)

from safetensors import safe_open
from typer.testing import CliRunner

from locoedit.cli import app
from locoedit.core.lowrank import LowRank
from locoedit.delta import EditDelta, export_lora
from locoedit.delta.export import lora_tensors
from locoedit.edit import EditRequest, compute_edit
from locoedit.localize import LocalizationResult
from locoedit.models import adapter_for, load_adapter
from locoedit.testing import TINY_PIPELINES

V01 = __import__("pathlib").Path(__file__).resolve().parents[1] / "data" / "v0.1"


def a1111_version(metadata: dict[str, str]) -> str:
    """A1111's ``extensions-builtin/Lora/network.py`` ``NetworkOnDisk.detect_version``, as written there."""
    if str(metadata.get("ss_base_model_version", "")).startswith("sdxl_"):
        return "SDXL"
    if str(metadata.get("ss_v2", "")) == "True":
        return "SD2"
    if len(metadata):
        return "SD1"
    return "Unknown"


def metadata_of(path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


def tiny_edit(family, tmp_path):
    adapter = adapter_for(TINY_PIPELINES[family](tmp_path / "tok"))
    request = EditRequest(model="tiny", concepts=("van gogh",), targets=("a painting",), kind="style", layers=(0, 1))
    return adapter, compute_edit(adapter, request)


@pytest.mark.parametrize(("family", "expected"), [("sd", "SD1"), ("sdxl", "SDXL")])
def test_kohya_exports_are_labelled_as_a1111_reads_them(family, expected, tmp_path):
    _, delta = tiny_edit(family, tmp_path)
    out = tmp_path / "lora.safetensors"
    exported = export_lora(delta, "kohya", out)
    metadata = metadata_of(out)
    assert a1111_version(metadata) == expected
    assert metadata["ss_network_module"] == "networks.lora"
    assert metadata["ss_network_dim"] == str(exported.rank) and float(metadata["ss_network_alpha"]) == exported.rank
    assert json.loads(metadata["locoedit_source"])["method"] == "locoedit"  # ours, beside theirs


def test_a_delta_of_locoedit_01_reading_1024_wide_text_is_labelled_sd2():
    up, down = torch.randn(8, 2, dtype=torch.float64), torch.randn(2, 1024, dtype=torch.float64)
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    delta = EditDelta(
        {},
        {name: {"sha256": "-", "shape": [8, 1024], "dtype": "torch.float32"}},
        "f",
        "sd2",
        "locoedit",
        [],
        {},
        factors={name: LowRank(up, down)},
        denoiser="UNet2DConditionModel",
    )
    tmp = __import__("tempfile").mkdtemp()
    export_lora(delta, "kohya", f"{tmp}/lora.safetensors")
    assert a1111_version(metadata_of(f"{tmp}/lora.safetensors")) == "SD2"


def test_an_export_at_a_strength_scales_the_update(tmp_path):
    _, delta = tiny_edit("sd", tmp_path)
    full, _ = lora_tensors(delta, "peft")
    half, _ = lora_tensors(delta, "peft", strength=0.5)
    for key in full:
        if key.endswith("lora_B.weight"):
            a_key = key.replace("lora_B", "lora_A")
            torch.testing.assert_close(half[key] @ half[a_key], 0.5 * full[key] @ full[a_key], rtol=1e-5, atol=1e-7)
    with pytest.raises(Exception, match="strength 1.5 must be a number from 0"):
        lora_tensors(delta, "peft", strength=1.5)


def test_apply_at_strength_zero_writes_the_original_model(tmp_path):
    """Through the CLI, with a delta file written by locoedit 0.1."""
    out = tmp_path / "applied"
    result = CliRunner().invoke(
        app, ["apply", "toyworld", str(V01 / "edit.safetensors"), "--out", str(out), "--strength", "0"]
    )
    assert result.exit_code == 0, result.output
    applied, original = load_adapter(str(out), device="cpu"), load_adapter("toyworld", device="cpu")
    for (name, a), (_, b) in zip(applied.denoiser.named_parameters(), original.denoiser.named_parameters()):
        assert torch.equal(a, b), name
    bad = CliRunner().invoke(
        app, ["apply", "toyworld", str(V01 / "edit.safetensors"), "--out", str(tmp_path / "x"), "--strength", "2"]
    )
    assert bad.exit_code == 2 and "strength must be a number in [0, 1]" in bad.output
    assert not (tmp_path / "x").exists()


def test_files_of_locoedit_01_still_load_and_work():
    delta = EditDelta.load(V01 / "edit.safetensors")
    adapter = load_adapter("toyworld", device="cpu")
    before = {name: p.detach().clone() for name, p in adapter.denoiser.named_parameters()}
    with delta.apply(adapter):
        assert any(not torch.equal(p, before[n]) for n, p in adapter.denoiser.named_parameters())
    assert all(torch.equal(p, before[n]) for n, p in adapter.denoiser.named_parameters())
    run = LocalizationResult.load(V01 / "localize")
    assert run.chosen.layers and run.request.model == "toyworld"
    request = EditRequest(model="toyworld", concepts=("circle",), targets=("square",), layers=str(V01 / "localize"))
    assert [layer["index"] for layer in compute_edit(adapter, request).layers] == run.chosen.layers
