"""UCE's shortcut on SD3/FLUX (``locoedit context-edit``, method ``uce-context``): the closed form on
``context_embedder`` alone, a stated baseline beside LocoEdit's edit of the localized joint blocks."""

import pytest
import torch

torch.set_num_threads(1)

from typer.testing import CliRunner

from locoedit.cli import app
from locoedit.core.errors import LocoeditError
from locoedit.delta import EditDelta, export_lora
from locoedit.edit import ContextEmbedderRequest, compute_edit
from locoedit.edit.context_embedder import PARAMETER, encoder_rows
from locoedit.testing import lora_images

PROMPTS = ("a {c} on black", "a {c} in the style of van gogh", "a red {c}")


def _request(**changes):
    fields = dict(
        model="tiny",
        concepts=("circle",),
        targets=("square",),
        prompts=PROMPTS,
        token="last-subject",
        preserve_neighbours=0,
        preserve_general=0,
    )
    return ContextEmbedderRequest(**{**fields, **changes})


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_the_context_embedder_maps_the_concepts_encoder_rows_onto_the_targets(joint_adapters, family):
    """With a small lambda and no preservation, the edited context_embedder sends the concept's encoder rows where
    the old one sent the target's; it is the only parameter the delta changes, and the delta names no layer."""
    adapter = joint_adapters[family]
    delta = compute_edit(adapter, _request(lambda_key=1e-4))
    assert delta.method == "uce-context" and delta.layers == [] and delta.parameters == [PARAMETER]
    rows = {}
    for word in ("circle", "square"):
        prompts = [p.replace("{c}", word) for p in PROMPTS]
        rows[word] = encoder_rows(adapter, prompts, [adapter.tokenize(p).phrase_positions(word) for p in prompts])
    x_o, x_t = rows["circle"], rows["square"]
    old = adapter.denoiser.context_embedder.weight.detach().double()
    new = delta.edited_values(adapter)[PARAMETER].double()
    miss = (x_o @ new.T - x_t @ old.T).norm() / (x_o @ old.T - x_t @ old.T).norm()
    assert miss < 0.05, f"the edit leaves {miss:.0%} of the concept-target gap"
    assert delta.settings["concept_rows"] == 3


def test_preservation_keeps_the_corpus_rows_the_edit_would_move(joint_adapters):
    """The preserved prompts' encoder rows move less with their second moment in the solve than without it."""
    adapter = joint_adapters["sd3"]
    kept = ("a blue triangle", "a house on white")
    plain = compute_edit(adapter, _request())
    preserved = compute_edit(adapter, _request(preserve=kept, preserve_scale=10.0))
    rows = encoder_rows(adapter, list(kept), [list(range(adapter.tokenize(p).length)) for p in kept])
    old = adapter.denoiser.context_embedder.weight.detach().double()
    moved = {
        name: (rows @ (delta.edited_values(adapter)[PARAMETER].double() - old).T).norm().item()
        for name, delta in (("plain", plain), ("preserved", preserved))
    }
    assert moved["preserved"] < 0.5 * moved["plain"], moved
    assert preserved.settings["preserve_prompts"]["explicit"] == 2


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_the_context_edit_exports_as_a_peft_lora_the_pipeline_loads(joint_adapters, family, tmp_path):
    adapter = joint_adapters[family]
    delta = compute_edit(adapter, _request())
    path = export_lora(delta, "peft", tmp_path / "lora.safetensors").path
    before, applied, loaded = lora_images(adapter, delta, path)
    change, mismatch = (applied - before).abs().max(), (loaded - applied).abs().max()
    assert change > 1e-3
    assert mismatch <= 2 / 255 and mismatch < 0.1 * change


def test_the_cli_writes_the_delta_and_refuses_layers(joint_adapters, tmp_path):
    """`locoedit context-edit` takes no --layers (nothing to localize); its delta loads and names its method."""
    folder = tmp_path / "sd3"
    joint_adapters["sd3"].pipe.save_pretrained(folder)
    out = tmp_path / "uce.safetensors"
    base = ["context-edit", str(folder), "--concept", "circle", "--target", "square", "--prompt", PROMPTS[0]]
    result = CliRunner().invoke(app, [*base, "--preserve-general", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"edited {PARAMETER} (1 matrices" in result.output
    assert EditDelta.load(out).method == "uce-context"
    refused = CliRunner().invoke(app, [*base, "--layers", "1", "--out", str(tmp_path / "other.safetensors")])
    assert refused.exit_code == 2 and "--layers" in refused.output
    assert not (tmp_path / "other.safetensors").exists()
    with pytest.raises(LocoeditError, match="has no layers, mining or block statistics"):
        _request(layers=(1,))


def test_a_cross_attention_model_is_refused_in_one_line_and_nothing_is_written(tmp_path):
    out = tmp_path / "edits" / "uce.safetensors"
    result = CliRunner().invoke(
        app, ["context-edit", "toyworld", "--concept", "circle", "--target", "square", "--out", str(out)]
    )
    assert result.exit_code == 2, result.output
    assert "has no context_embedder" in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.parent.exists()
