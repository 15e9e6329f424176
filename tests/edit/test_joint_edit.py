"""LocoEdit on joint attention (SD3, FLUX): the closed form on the dual-stream blocks' add_k_proj/add_v_proj, fitted
to the text rows each block receives at each denoising step; single-stream blocks refused."""

import pytest
import torch

torch.set_num_threads(1)

from typer.testing import CliRunner

from locoedit.cli import app
from locoedit.core.errors import LocoeditError
from locoedit.delta import export_lora
from locoedit.edit import EditRequest, compute_edit
from locoedit.edit.closed_form import closed_form_edit, compress_rows
from locoedit.edit.preservation import input_space, text_fingerprint
from locoedit.edit.rows import STREAM_SEEDS, all_real_positions, encode_rows
from locoedit.interventions.capture import TextStreamCapture
from locoedit.models import GenerationSettings, ModelSettings
from locoedit.testing import lora_images

STEPS = 3  # the joint_adapters fixture's (tests/edit/conftest.py)
PROMPTS = ("a {c} on black", "a {c} in the style of van gogh", "a red {c}")


def _dual(adapter):
    return [layer for layer in adapter.layers if layer.stream == "dual"]


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_captured_rows_are_what_each_block_projects_at_each_step(joint_adapters, family):
    """The rows differ per block and per step (the stream is rewritten and modulated), and they are exactly what
    add_k_proj receives: the same generation (the first capture seed), recorded by a hook of the test's own, gives
    the same rows."""
    adapter = joint_adapters[family]
    prompts = ["a red circle", "a house"]
    positions = [[1, 2], [0, 2, 3]]
    rows = encode_rows(adapter, prompts, positions)
    assert len(rows) == 5 and rows.positions() == positions
    seen = {layer.name: [] for layer in _dual(adapter)}
    handles = [
        layer.module.add_k_proj.register_forward_pre_hook(lambda m, args, name=layer.name: seen[name].append(args[0]))
        for layer in _dual(adapter)
    ]
    try:
        adapter.generate(adapter.encode(prompts), [STREAM_SEEDS[0]] * 2, adapter.default_settings())
    finally:
        for handle in handles:
            handle.remove()
    first, second = _dual(adapter)[:2]
    for layer in (first, second):
        per_step = rows.per_step(layer)
        assert per_step.shape == (5, len(STREAM_SEEDS) * STEPS, layer.module.add_k_proj.in_features)
        for step, text in enumerate(seen[layer.name]):  # the first capture seed's steps come first
            conditional = text[-2:]
            expected = torch.stack([conditional[p, q] for p, chosen in enumerate(positions) for q in chosen])
            torch.testing.assert_close(per_step[:, step], expected.double(), atol=1e-5, rtol=1e-4)  # batch of 4, not 2
        assert (per_step[:, 0] - per_step[:, -1]).abs().max() > 1e-4  # the timestep modulation moves them
    assert (rows.per_step(first) - rows.per_step(second)).abs().max() > 1e-4
    assert input_space(first) != input_space(second)  # each block is its own input space


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_the_edit_maps_the_concepts_captured_rows_onto_the_targets(joint_adapters, family):
    """Without preservation and with a small lambda, the edited add_k_proj/add_v_proj send the concept's rows (at
    every step) where the old ones sent the target's; only the chosen dual-stream blocks' projections change."""
    adapter = joint_adapters[family]
    layer = _dual(adapter)[1]
    request = EditRequest(
        model="tiny",
        concepts=("circle",),
        targets=("square",),
        prompts=PROMPTS,
        layers=(layer.index,),
        token="last-subject",
        lambda_key=1e-4,
        lambda_value=1e-4,
        preserve_neighbours=0,
        preserve_general=0,
        preserve_nearest=0,
    )
    delta = compute_edit(adapter, request)
    assert delta.parameters == [f"{layer.name}.add_k_proj.weight", f"{layer.name}.add_v_proj.weight"]
    rows = {}
    for word in ("circle", "square"):
        prompts = [p.replace("{c}", word) for p in PROMPTS]
        rows[word] = encode_rows(adapter, prompts, [adapter.tokenize(p).phrase_positions(word) for p in prompts])
    concept, target = rows["circle"], rows["square"]
    x_o, x_t = concept.at(layer), target.at(layer)  # [3 prompts x STEPS, in]
    assert x_o.shape[0] == 3 * len(STREAM_SEEDS) * STEPS
    edited = delta.edited_values(adapter)
    for projection in ("add_k_proj", "add_v_proj"):
        old = getattr(layer.module, projection).weight.detach().double()
        new = edited[f"{layer.name}.{projection}.weight"].double()
        miss = (x_o @ new.T - x_t @ old.T).norm() / (x_o @ old.T - x_t @ old.T).norm()
        assert miss < 0.05, f"{projection}: the edit leaves {miss:.0%} of the concept-target gap"


def test_a_single_stream_block_is_refused_in_one_line_and_nothing_is_written(joint_adapters, tmp_path):
    adapter = joint_adapters["flux"]
    single = next(layer for layer in adapter.layers if layer.stream == "single")
    request = EditRequest(
        model="tiny", concepts=("circle",), targets=("square",), prompts=PROMPTS, layers=(single.index,)
    )
    with pytest.raises(LocoeditError, match=rf"layer {single.index} \(single\.0\) is a single-stream block"):
        compute_edit(adapter, request)
    folder = tmp_path / "flux"
    adapter.pipe.save_pretrained(folder)
    out = tmp_path / "edits" / "edit.safetensors"
    result = CliRunner().invoke(
        app,
        ["edit", str(folder), "--concept", "circle", "--target", "square", "--layers", str(single.index)]
        + ["--out", str(out)],
    )
    assert result.exit_code == 2, result.output
    assert "single-stream block" in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.parent.exists()


def test_the_statistics_fingerprint_of_a_joint_model_follows_its_denoiser(joint_adapters):
    """Joint blocks read the denoiser's own text stream: cached corpus statistics must not outlive a change of the
    denoiser's weights or of the sampling settings, though the text encoders are the same."""
    adapter = joint_adapters["sd3"]
    before = text_fingerprint(adapter)
    weight = adapter.layers[0].module.add_k_proj.weight
    original = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1.0)
    try:
        changed = text_fingerprint(adapter)
    finally:
        with torch.no_grad():
            weight.copy_(original)
    assert changed != before and text_fingerprint(adapter) == before
    settings = adapter.recommended
    adapter.recommended = ModelSettings(generation=GenerationSettings(STEPS + 1, 4.0, 16, 16))
    try:
        assert text_fingerprint(adapter) != before
    finally:
        adapter.recommended = settings


def test_a_capture_whose_blocks_never_ran_is_an_error(joint_adapters):
    adapter = joint_adapters["sd3"]
    capture = TextStreamCapture(adapter.layers, all_real_positions(adapter, ["a house"]))
    with pytest.raises(RuntimeError, match="never projected their text"):
        capture.verify()


def _small_edit(adapter):
    request = EditRequest(
        model="tiny",
        concepts=("circle",),
        targets=("square",),
        prompts=PROMPTS,
        layers=tuple(layer.index for layer in _dual(adapter)),
        preserve_neighbours=0,
        preserve_general=0,
        preserve_nearest=0,
    )
    return compute_edit(adapter, request)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_a_joint_edit_exports_as_a_peft_lora_the_pipeline_loads(joint_adapters, family, tmp_path):
    """The pipeline's own load_lora_weights reads the file into ``transformer`` and draws what the applied edit
    draws (within 2/255); kohya is refused with the reason."""
    adapter = joint_adapters[family]
    delta = _small_edit(adapter)
    path = export_lora(delta, "peft", tmp_path / "lora.safetensors").path
    before, applied, loaded = lora_images(adapter, delta, path)
    assert delta.factors and not delta.tensors  # the compressed rows keep the update low-rank
    change, mismatch = (applied - before).abs().max(), (loaded - applied).abs().max()
    assert change > 1e-3  # the edit draws something else (tiny random FLUX reads its text mostly in single blocks)
    assert mismatch <= 2 / 255 and mismatch < 0.1 * change
    with pytest.raises(LocoeditError, match="use --format peft"):
        export_lora(delta, "kohya", tmp_path / "kohya.safetensors")
    assert not (tmp_path / "kohya.safetensors").exists()


def test_compressed_rows_give_the_same_closed_form_and_drop_only_weak_directions():
    """All directions kept: the same W' as from the thousands of rows; at 99.9% of the energy, rows in a
    low-dimensional subspace plus faint noise keep only the subspace, and the update's rank follows."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(24, 16, generator=generator, dtype=torch.float64)
    basis = torch.randn(4, 16, generator=generator, dtype=torch.float64)
    coefficients = torch.randn(300, 4, generator=generator, dtype=torch.float64)
    x_o = coefficients @ basis + 1e-4 * torch.randn(300, 16, generator=generator, dtype=torch.float64)
    mix = torch.randn(4, 4, generator=generator, dtype=torch.float64)
    x_t = x_o + 0.1 * coefficients @ mix @ basis  # each row moved within the subspace
    exact = closed_form_edit(weight, x_o, x_t, 0.1)
    sources, targets = compress_rows(x_o, x_t, 1.0)
    assert sources.shape == (16, 16)
    torch.testing.assert_close(closed_form_edit(weight, sources, targets, 0.1), exact)
    sources, targets = compress_rows(x_o, x_t, 0.999)
    assert sources.shape == (4, 16)
    truncated = closed_form_edit(weight, sources, targets, 0.1)
    assert torch.linalg.matrix_rank(truncated - weight, rtol=1e-8) == 4
    assert (truncated - exact).norm() < 1e-2 * (exact - weight).norm()


def test_auto_layers_keep_the_dual_stream_blocks_of_locogens_windows(joint_adapters):
    """FLUX: LocoGen's windows may hold single-stream blocks; `--layers auto` edits their dual-stream blocks, and
    refuses with the reason when the windows hold none."""
    from locoedit.edit.layers import layers_at

    adapter = joint_adapters["flux"]
    assert [layer.index for layer in layers_at(adapter, [1, 2, 3], auto=True)] == [1]
    with pytest.raises(LocoeditError, match="LocoGen chose only single-stream blocks"):
        layers_at(adapter, [3, 4], auto=True)
    with pytest.raises(LocoeditError, match="is a single-stream block"):  # indices a user gave are refused
        layers_at(adapter, [1, 2])


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_causal_tracing_restores_each_joint_block(joint_adapters, family):
    """Every text-reading joint block is a tracing site, in execution order, and restoring it is measured."""
    from locoedit.scoring import PixelScorer
    from locoedit.trace import TraceRequest, denoiser_sites, trace

    adapter = joint_adapters[family]
    sites = [site for site in denoiser_sites(adapter) if site.kind == "joint_attention"]
    assert [site.name for site in sites] == [f"transformer.{layer.name}" for layer in adapter.layers]
    request = TraceRequest(
        model="tiny", prompts=("a red circle on black",), concept="red", seeds=(0,), steps=STEPS, height=16, width=16
    )
    result = trace(request, adapter=adapter, scorer=PixelScorer())
    traced = {site.name: site.effect for site in result.sites if site.part == "denoiser"}
    assert all(traced[site.name] is not None for site in sites)
