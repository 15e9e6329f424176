"""Hidden-state recording and patching: golden references on tiny pipelines of every family."""

import pytest
import torch

from locoedit.core.errors import LocoeditError
from locoedit.interventions import ActivationPatch, ActivationRecorder
from locoedit.models import GenerationSettings

SETTINGS = GenerationSettings(3, 4.0, 16, 16)
FAMILIES = ["sd", "sdxl", "if", "pixart"]


@pytest.mark.parametrize("family", FAMILIES)
def test_patching_the_denoiser_output_replays_another_prompt(tiny_adapters, family):
    """The denoiser's output at every step determines the image (same seed, same scheduler): patching in the
    outputs recorded while generating prompt A makes prompt B's run produce A's image."""
    adapter = tiny_adapters[family]
    a, b = adapter.encode(["a red circle"]), adapter.encode(["a house in the style of van gogh"])
    denoiser = adapter.denoiser_name
    recorder = ActivationRecorder([denoiser])
    image_a = adapter.generate(a, [0], SETTINGS, [recorder])
    assert len(recorder.outputs[denoiser]) == SETTINGS.num_inference_steps
    image_b = adapter.generate(b, [0], SETTINGS)
    patched = adapter.generate(b, [0], SETTINGS, [ActivationPatch(denoiser, recorder.outputs[denoiser])])
    assert (patched - image_a).abs().max() < 1e-5
    assert (image_b - image_a).abs().max() > 1e-3  # the test can fail: the prompts give different images


@pytest.mark.parametrize("family", FAMILIES)
def test_patching_a_site_with_its_own_recording_changes_nothing(tiny_adapters, family):
    adapter = tiny_adapters[family]
    site = f"{adapter.denoiser_name}.{adapter.layers[len(adapter.layers) // 2].name}"
    prompts = adapter.encode(["a red circle", "a house"])
    recorder = ActivationRecorder([site])
    plain = adapter.generate(prompts, [0, 1], SETTINGS, [recorder])
    again = adapter.generate(prompts, [0, 1], SETTINGS, [ActivationPatch(site, recorder.outputs[site])])
    assert torch.equal(plain, again)


def test_patching_only_selected_rows(tiny_adapters):
    """Rows index the module's own batch: [unconditional x 2, conditional x 2] under classifier-free guidance."""
    adapter = tiny_adapters["sd"]
    site = f"unet.{adapter.layers[0].name}"
    source, prompts = adapter.encode(["a red circle"] * 2), adapter.encode(["a house", "a dog"])
    recorder = ActivationRecorder([site])
    adapter.generate(source, [0, 1], SETTINGS, [recorder])
    plain = adapter.generate(prompts, [0, 1], SETTINGS)
    rows = torch.tensor([False, False, True, False])  # the conditional half of batch row 0 only
    patched = adapter.generate(prompts, [0, 1], SETTINGS, [ActivationPatch(site, recorder.outputs[site], rows)])
    assert (patched[0] - plain[0]).abs().max() > 1e-4
    assert torch.equal(patched[1], plain[1])


def test_hooks_are_removed_and_mismatches_named(tiny_adapters):
    adapter = tiny_adapters["sd"]
    site = f"unet.{adapter.layers[0].name}"
    module = adapter.denoiser.get_submodule(adapter.layers[0].name)
    prompts = adapter.encode(["a red circle"])
    recorder = ActivationRecorder([site])
    adapter.generate(prompts, [0], GenerationSettings(2, 4.0, 16, 16), [recorder])
    with pytest.raises(RuntimeError, match="ran 3 times but only 2 outputs were recorded"):
        adapter.generate(prompts, [0], SETTINGS, [ActivationPatch(site, recorder.outputs[site])])
    assert not module._forward_hooks, "a failed generation leaves no hook behind"
    with pytest.raises(LocoeditError, match="the pipeline has no module 'unet.down_blocks.9'"):
        adapter.generate(prompts, [0], SETTINGS, [ActivationRecorder(["unet.down_blocks.9"])])
    with pytest.raises(LocoeditError, match="the pipeline has no module 'vae2.encoder'"):
        adapter.generate(prompts, [0], SETTINGS, [ActivationRecorder(["vae2.encoder"])])


@pytest.mark.gpu
def test_interventions_on_cuda_in_half_precision(tiny_dir):
    """The CPU path is covered above; here recorded states, routing targets and deltas move to the GPU."""
    from locoedit.edit import EditRequest, compute_edit
    from locoedit.interventions import Routing, TextRouting
    from locoedit.models import adapter_for
    from locoedit.testing import tiny_stable_diffusion

    adapter = adapter_for(tiny_stable_diffusion(tiny_dir / "sd-cuda-patch").to("cuda", torch.float16))
    a, b = adapter.encode(["a red circle"]), adapter.encode(["a house in the style of van gogh"])
    recorder = ActivationRecorder(["unet"])
    image_a = adapter.generate(a, [0], SETTINGS, [recorder])
    patched = adapter.generate(b, [0], SETTINGS, [ActivationPatch("unet", recorder.outputs["unet"])])
    assert image_a.isfinite().all() and (patched - image_a).abs().max() < 1e-2
    every_layer = TextRouting(Routing.uniform(range(len(adapter.layers)), 1), a.conditional)
    assert (adapter.generate(b, [0], SETTINGS, [every_layer]) - image_a).abs().max() < 1e-2
    delta = compute_edit(
        adapter, EditRequest(model="tiny", concepts=("van gogh",), targets=("a painting",), kind="style", layers=(1, 2))
    )
    weights = {n: p.clone() for n, p in adapter.denoiser.named_parameters()}
    edited = adapter.generate(b, [0], SETTINGS, [delta])
    assert edited.isfinite().all() and (edited - adapter.generate(b, [0], SETTINGS)).abs().max() > 1e-3
    assert all(torch.equal(p, weights[n]) for n, p in adapter.denoiser.named_parameters())
