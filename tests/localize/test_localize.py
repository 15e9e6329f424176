import json

import pytest
import torch

from locoedit.core.errors import LocoeditError
from locoedit.interventions.routing import Routing, TextRouting
from locoedit.localize import LocalizationRequest, infer_concept, localize
from locoedit.models import GenerationSettings
from locoedit.scoring import ConceptScorer, PixelScorer

SETTINGS = GenerationSettings(4, 4.0, 16, 16)
PROMPTS = ["a house in the style of van gogh", "a dog in the style of van gogh"]
TARGETS = ["a house", "a dog"]


def request(**changes):
    fields = dict(model="tiny", prompts=PROMPTS[:1], targets=TARGETS[:1], window=2, seeds=(0, 1), steps=3)
    return LocalizationRequest(**{**fields, **changes})


def _exact_and_batched(adapter, seeds=(0, 1, 2)):
    prompts, targets = adapter.encode(PROMPTS[:1]), adapter.encode(TARGETS[:1])
    rows = len(seeds)
    windows = [list(range(i, i + 2)) for i in range(len(adapter.layers) - 1)]
    exact = torch.cat(
        [
            adapter.generate(
                prompts.take([0] * rows),
                list(seeds),
                SETTINGS,
                [TextRouting(Routing.uniform(window, rows), targets.conditional.take([0] * rows))],
            )
            for window in windows
        ]
    )
    batched_routing = Routing(tuple(tuple(w) for w in windows for _ in range(rows)))
    n = rows * len(windows)
    batched = adapter.generate(
        prompts.take([0] * n),
        list(seeds) * len(windows),
        SETTINGS,
        [TextRouting(batched_routing, targets.conditional.take([0] * n))],
    )
    return exact, batched


@pytest.mark.parametrize("family", ["sd", "sdxl", "pixart"])
def test_batched_windows_give_the_images_of_one_loop_per_window(tiny_adapters, family):
    exact, batched = _exact_and_batched(tiny_adapters[family])
    assert (exact - batched).abs().max() <= 1e-3
    assert (exact[:3] - exact[3:6]).abs().max() > 1e-3  # different windows really differ


def test_batched_deepfloyd_if_matches_in_float64(tiny_dir):
    """IF's float32 images may drift by ~1e-2: random weights amplify round-off through DDPM's learned variance
    and dynamic thresholding over many steps. In float64 the two modes agree to round-off, so the routing is
    the same; the float32 drift is arithmetic, not a difference in what each row computes."""
    from locoedit.models import adapter_for
    from locoedit.testing import tiny_deepfloyd_if

    adapter = adapter_for(tiny_deepfloyd_if(tiny_dir / "if64").to(torch.float64))
    exact, batched = _exact_and_batched(adapter)
    assert (exact - batched).abs().max() <= 1e-6


def test_golden_reference_hand_written_loop_with_key_value_hooks(tiny_adapters):
    """The paper's mechanism, written out by hand: a plain DDIM loop with classifier-free guidance, where the
    window's to_k/to_v outputs for the conditional half are replaced by the projections of the target text."""
    adapter = tiny_adapters["sd"]
    pipe, window, seed = adapter.pipe, [2, 3], 5
    prompts, targets = adapter.encode(PROMPTS[:1]), adapter.encode(TARGETS[:1])
    library = adapter.generate(
        prompts, [seed], SETTINGS, [TextRouting(Routing.uniform(window, 1), targets.conditional)]
    )

    target_text = targets.conditional.embeds  # [1, tokens, dim]
    hooks = []
    for layer in (adapter.layers[i] for i in window):
        for projection in (layer.module.to_k, layer.module.to_v):

            def swap(module, args, output):
                replaced = output.clone()
                replaced[1:] = torch.nn.functional.linear(target_text, module.weight, module.bias)  # [uncond, cond]
                return replaced

            hooks.append(projection.register_forward_hook(swap))
    try:
        scheduler = pipe.scheduler
        scheduler.set_timesteps(SETTINGS.num_inference_steps)
        generator = torch.Generator("cpu").manual_seed(seed)
        latents = torch.randn((1, 4, 8, 8), generator=generator) * scheduler.init_noise_sigma
        text = torch.cat([prompts.unconditional.embeds, prompts.conditional.embeds])
        with torch.no_grad():
            for t in scheduler.timesteps:
                model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
                uncond, cond = pipe.unet(model_input, t, encoder_hidden_states=text).sample.chunk(2)
                noise = uncond + SETTINGS.guidance_scale * (cond - uncond)
                latents = scheduler.step(noise, t, latents).prev_sample
            image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    finally:
        for hook in hooks:
            hook.remove()
    by_hand = (image / 2 + 0.5).clamp(0, 1)
    assert (library - by_hand).abs().max() < 1e-5
    unrouted = adapter.generate(prompts, [seed], SETTINGS)
    assert (unrouted - by_hand).abs().max() > 1e-3


def _strip_timings(data):
    return {k: v for k, v in data.items() if k != "timings"}


class Interrupting(PixelScorer):
    """Stops the run (like Ctrl-C) when asked to score the n-th batch of images."""

    def __init__(self, after: int):
        self.calls, self.after = 0, after

    def effect(self, reference, images, concept):
        self.calls += 1
        if self.calls > self.after:
            raise KeyboardInterrupt
        return super().effect(reference, images, concept)


def test_an_interrupted_sweep_resumes_and_ends_with_the_same_json(tiny_adapters, tmp_path):
    adapter = tiny_adapters["sd"]
    req = request(mode="exact")
    complete = localize(req, tmp_path / "complete", adapter, PixelScorer())

    with pytest.raises(KeyboardInterrupt):
        localize(req, tmp_path / "resumed", adapter, Interrupting(after=2))
    finished = sorted(p.name for p in (tmp_path / "resumed" / "progress").glob("window_*.json"))
    assert finished == ["window_00-01.json", "window_01-02.json"]
    assert not (tmp_path / "resumed" / "localization.json").exists()

    generated = []
    original_generate = adapter.generate
    adapter.generate = lambda *a, **k: generated.append(a[3]) or original_generate(*a, **k)
    try:
        localize(req, tmp_path / "resumed", adapter, PixelScorer())
    finally:
        del adapter.generate
    assert len(generated) == len(complete.windows) - 2  # finished windows and references are not redone
    first = json.loads((tmp_path / "complete" / "localization.json").read_text())
    second = json.loads((tmp_path / "resumed" / "localization.json").read_text())
    assert _strip_timings(first) == _strip_timings(second)


def test_a_run_killed_while_writing_the_reference_images_resumes_with_every_image(tiny_adapters, tmp_path, monkeypatch):
    from locoedit.localize.locogen import LocalizationFolder

    adapter, req = tiny_adapters["sd"], request(mode="exact")
    write_images = LocalizationFolder.write_images

    def killed_at_the_target_images(self, group, images, request):
        if group == "target":
            raise KeyboardInterrupt
        return write_images(self, group, images, request)

    monkeypatch.setattr(LocalizationFolder, "write_images", killed_at_the_target_images)
    with pytest.raises(KeyboardInterrupt):
        localize(req, tmp_path, adapter, PixelScorer())
    monkeypatch.setattr(LocalizationFolder, "write_images", write_images)
    localize(req, tmp_path, adapter, PixelScorer())
    assert sorted(p.name for p in (tmp_path / "images" / "target").glob("*.png")) == ["p0_s0.png", "p0_s1.png"]


@pytest.mark.parametrize("chunk", [2, 4])  # 6 windows: three full loops; a full loop and a part-filled one
def test_localize_gives_the_same_sweep_in_exact_and_batched_mode(tiny_adapters, chunk):
    adapter = tiny_adapters["sd"]
    exact = localize(request(mode="exact"), None, adapter, PixelScorer())
    batched = localize(request(mode="batched", chunk=chunk), None, adapter, PixelScorer())
    assert len(exact.windows) == len(adapter.layers) - 1 == 6 > chunk
    assert [w.layers for w in batched.windows] == [w.layers for w in exact.windows]
    for one, other in zip(exact.windows, batched.windows):  # images agree to 1e-3 (float round-off), effects too
        assert other.effects == pytest.approx(one.effects, abs=1e-4), one.layers
    assert batched.full_swap_effect == pytest.approx(exact.full_swap_effect, abs=1e-6)
    assert batched.chosen.layers == exact.chosen.layers
    effects = [w.effect for w in exact.windows]
    assert max(effects) - sorted(effects)[-2] > 1e-3  # the choice is not decided by round-off


def test_an_interrupted_batched_sweep_resumes_and_ends_with_the_same_json(tiny_adapters, tmp_path):
    adapter = tiny_adapters["sd"]
    req = request(mode="batched", chunk=2)
    complete = localize(req, tmp_path / "complete", adapter, PixelScorer())

    with pytest.raises(KeyboardInterrupt):  # the first loop (references and two windows) is scored, then Ctrl-C
        localize(req, tmp_path / "resumed", adapter, Interrupting(after=2))
    finished = sorted(p.name for p in (tmp_path / "resumed" / "progress").glob("window_*.json"))
    assert finished == ["window_00-01.json", "window_01-02.json"]

    generated = []
    original_generate = adapter.generate
    adapter.generate = lambda *a, **k: generated.append(len(a[1])) or original_generate(*a, **k)
    try:
        localize(req, tmp_path / "resumed", adapter, PixelScorer())
    finally:
        del adapter.generate
    rows = len(req.prompts) * len(req.seeds)
    # The four windows left, two per loop; the references come from the progress file, not generated again.
    assert generated == [2 * rows, 2 * rows] and len(complete.windows) == 6
    first = json.loads((tmp_path / "complete" / "localization.json").read_text())
    second = json.loads((tmp_path / "resumed" / "localization.json").read_text())
    assert _strip_timings(first) == _strip_timings(second)


def test_run_folder_contents(tiny_adapters, tmp_path):
    adapter = tiny_adapters["pixart"]
    result = localize(
        request(prompts=PROMPTS, targets=TARGETS, concept="in the style of van gogh"), tmp_path, adapter, PixelScorer()
    )
    data = json.loads((tmp_path / "localization.json").read_text())
    assert data["model"] == "tiny" and data["request"]["prompts"] == PROMPTS
    assert len(data["layers"]) == 4 and data["layers"][1]["name"] == "transformer_blocks.1.attn2"
    assert [w["layers"] for w in data["windows"]] == [[0, 1], [1, 2], [2, 3]]  # no window shrinks at the end
    best = max(data["windows"], key=lambda w: w["effect"])
    assert data["chosen"]["layers"] == best["layers"] == result.chosen.layers
    assert data["chosen"]["names"] == [f"transformer_blocks.{i}.attn2" for i in best["layers"]]
    for window in data["windows"]:
        assert len(window["effects"]) == 4  # 2 prompts x 2 seeds
        assert window["effect"] == pytest.approx(sum(window["effects"]) / 4)
        assert window["effect_std"] > 0
        assert all((tmp_path / path).is_file() for path in window["images"])
    assert {"torch", "diffusers", "locoedit"} <= set(data["versions"])
    assert data["timings"]["total_s"] > 0
    html = (tmp_path / "report.html").read_text()
    assert "<svg" in html and all(path in html for path in data["windows"][0]["images"][:2])
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporaries


def test_auto_window_stops_at_the_first_size_that_passes(tiny_adapters, tmp_path):
    adapter = tiny_adapters["sd"]
    lenient = localize(request(window="auto", auto_threshold=0.01), None, adapter, PixelScorer())
    assert [s.window_size for s in lenient.sweeps] == [1]
    strict = localize(request(window="auto", auto_threshold=1.0), None, adapter, PixelScorer())
    sizes = [s.window_size for s in strict.sweeps]
    assert sizes == list(range(1, len(sizes) + 1)) and len(sizes) > 1
    assert strict.chosen.effect >= strict.full_swap_effect or sizes[-1] == len(adapter.layers)


def test_the_auto_threshold_is_a_share_of_the_all_layer_effect(tiny_adapters):
    """The rule: stop at the first size whose best window reaches ``auto_threshold x full_swap_effect``. The
    thresholds bracket single layers' share of the full swap (the pixel effects are far below 1, so a threshold
    compared with raw effects would never be met by one layer at these thresholds)."""
    adapter = tiny_adapters["sd"]
    single = localize(request(window=1), None, adapter, PixelScorer())
    best, full = max(w.effect for w in single.windows), single.full_swap_effect
    share = best / full  # the single best layer's share of the all-layer effect
    assert 0 < full < 0.5 and 0 < share < 0.9  # measured: best layer 0.055, full swap 0.070 (share 0.79)
    passes = localize(request(window="auto", auto_threshold=share * 0.99), None, adapter, PixelScorer())
    assert [s.window_size for s in passes.sweeps] == [1]
    assert passes.full_swap_effect == pytest.approx(full)
    fails = localize(request(window="auto", auto_threshold=share * 1.01), None, adapter, PixelScorer())
    sizes = [s.window_size for s in fails.sweeps]
    assert sizes[:2] == [1, 2]
    for sweep in fails.sweeps[:-1]:  # every size before the last missed the threshold; the last reached it
        assert sweep.best().effect < share * 1.01 * full
    assert fails.sweeps[-1].best().effect >= share * 1.01 * full or sizes[-1] == len(adapter.layers)


def test_on_the_toy_world_routing_the_styles_window_removes_the_style():
    """A real concept scorer (the toy world's probe): removing the style must score as a positive effect, and only
    windows within layers 0-4 carry the style (the README's finding)."""
    from locoedit.models import load_adapter
    from locoedit.scoring import make_scorer

    adapter = load_adapter("toyworld", device="cpu")
    result = localize(
        LocalizationRequest(
            model="toyworld",
            prompts=("a red circle on black in the style of kandinsky",),
            targets=("a red circle on black",),
            concept="in the style of kandinsky",
            window=3,
            seeds=(0, 1),
            mode="batched",
            chunk=9,
        ),
        None,
        adapter,
        make_scorer("toyworld"),
    )
    assert result.full_swap_effect > 0.9  # the probe sees the style in the prompt's images, not in the target's
    effects = {tuple(w.layers): w.effect for w in result.windows}
    assert result.chosen.effect == max(effects.values()) > 0.9  # measured: 1.0 for windows 0-2, 1-3, 2-4
    assert result.chosen.layers[-1] <= 4
    assert all(abs(effect) < 0.05 for window, effect in effects.items() if window[0] > 2)  # no effect elsewhere


def test_infer_concept():
    assert infer_concept("a house in the style of Van Gogh", "a house") == "in the style of Van Gogh"
    assert infer_concept("a red circle on black", "a circle on black") == "red"


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(prompts=(), targets=()), "prompts is empty"),
        (dict(prompts=("",), targets=("a house",)), "empty"),
        (dict(targets=PROMPTS[:1]), "equals its prompt"),
        (dict(prompts=PROMPTS, targets=TARGETS[:1]), "one target per prompt"),
        (dict(seeds=()), "seeds is empty"),
        (dict(window=0), "window 0 is invalid"),
        (dict(mode="fast"), "mode 'fast'"),
        (dict(dtype="float8"), "dtype 'float8'"),
    ],
)
def test_bad_requests_name_the_problem(changes, message):
    with pytest.raises(LocoeditError, match=message):
        request(**changes)


def test_window_larger_than_the_model_is_refused_and_nothing_is_written(tiny_adapters, tmp_path):
    with pytest.raises(LocoeditError, match="larger than the model's 7 text-reading layers"):
        localize(request(window=8), tmp_path / "run", tiny_adapters["sd"], PixelScorer())
    assert not (tmp_path / "run").exists()


def test_a_folder_holding_another_run_is_refused(tiny_adapters, tmp_path):
    localize(request(), tmp_path, tiny_adapters["sd"], PixelScorer())
    before = (tmp_path / "localization.json").read_bytes()
    with pytest.raises(LocoeditError, match="holds a different run \\(differs in: seeds\\)"):
        localize(request(seeds=(7,)), tmp_path, tiny_adapters["sd"], PixelScorer())
    assert (tmp_path / "localization.json").read_bytes() == before


def test_unavailable_models_and_unsupported_pipelines_are_named(tmp_path):
    from locoedit.models import load_adapter

    with pytest.raises(LocoeditError, match="does not exist"):
        load_adapter(str(tmp_path / "missing"))
    with pytest.raises(LocoeditError, match="weights must be local or reachable"):
        load_adapter("nobody-has/this-model")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    with pytest.raises(LocoeditError, match="supported pipelines: StableDiffusionPipeline"):
        load_adapter(str(tmp_path / "other"))


@pytest.mark.gpu
def test_batched_matches_exact_on_cuda_in_half_precision(tiny_dir):
    """The CPU path is covered by test_batched_windows_give_the_images_of_one_loop_per_window."""
    from locoedit.models import adapter_for
    from locoedit.testing import tiny_stable_diffusion

    adapter = adapter_for(tiny_stable_diffusion(tiny_dir / "sd-cuda").to("cuda", torch.float16))
    exact, batched = _exact_and_batched(adapter)
    assert exact.isfinite().all()
    assert (exact - batched).abs().max() <= 1e-2  # float16 round-off over 4 steps


def test_a_model_folder_can_recommend_its_generation_settings(tiny_sd_folder, tmp_path):
    import shutil

    from locoedit.models import DEFAULTS_FILE, load_adapter

    folder = tmp_path / "model"
    shutil.copytree(tiny_sd_folder, folder)
    assert load_adapter(str(folder), device="cpu").default_settings().num_inference_steps == 50
    settings = {"num_inference_steps": 7, "guidance_scale": 2.5, "height": 16, "width": 16}
    (folder / DEFAULTS_FILE).write_text(json.dumps({"generation": settings}))
    assert load_adapter(str(folder), device="cpu").default_settings() == GenerationSettings(**settings)
    (folder / DEFAULTS_FILE).write_text(json.dumps({"generation": {"steps": 7}}))
    with pytest.raises(LocoeditError, match="locoedit.json is damaged: .*lacks the field 'num_inference_steps'"):
        load_adapter(str(folder), device="cpu")


def test_a_scheduler_is_used_for_the_run_only(tiny_adapters, tmp_path):
    adapter = tiny_adapters["sd"]
    before = adapter.pipe.scheduler
    euler = localize(request(scheduler="EulerDiscreteScheduler"), None, adapter, PixelScorer())
    ddim = localize(request(), None, adapter, PixelScorer())
    assert adapter.pipe.scheduler is before
    assert [w.effect for w in euler.windows] != [w.effect for w in ddim.windows]
    with pytest.raises(LocoeditError, match="not a diffusers scheduler class"):
        localize(request(scheduler="FastScheduler"), tmp_path / "run", adapter, PixelScorer())
    assert not (tmp_path / "run").exists()


def test_a_prompt_longer_than_the_text_encoder_reads_is_refused_before_anything_is_written(tiny_adapters, tmp_path):
    long = "a house in the style of van gogh " + "with a red door " * 6  # the tiny CLIP reads 16 tokens
    with pytest.raises(LocoeditError, match=r"has \d+ tokens but the text encoder reads at most 16"):
        localize(
            request(prompts=(long,), targets=("a house",), concept="van gogh"),
            tmp_path / "run",
            tiny_adapters["sd"],
            PixelScorer(),
        )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "damage, message",
    [
        ("request.json", "request.json is not valid JSON"),
        ("progress/window_00-01.json", "window_00-01.json is not valid JSON"),
        ("progress/reference.safetensors", "reference.safetensors is damaged"),
    ],
)
def test_damaged_run_folder_state_is_one_line(tiny_adapters, tmp_path, damage, message):
    adapter = tiny_adapters["sd"]
    localize(request(), tmp_path, adapter, PixelScorer())
    (tmp_path / "localization.json").unlink()  # as if stopped before the end
    (tmp_path / damage).write_bytes(b"\x00garbled")
    with pytest.raises(LocoeditError) as error:
        localize(request(), tmp_path, adapter, PixelScorer())
    assert message in str(error.value) and "\n" not in str(error.value)


class Channels(ConceptScorer):
    """ "red", "green" or "blue": the mean of that channel."""

    spec = "channels"

    def score(self, images, concept):
        return images[:, ["red", "green", "blue"].index(concept)].flatten(1).mean(1)


def test_adopting_a_text_adds_its_gain_to_the_concepts_loss(tiny_adapters):
    adapter, scorer = tiny_adapters["sd"], Channels()
    run = {c: localize(request(concept=c), adapter=adapter, scorer=scorer) for c in ("red", "green")}
    both = localize(request(concept="red", adopt="green"), adapter=adapter, scorer=scorer)
    # The loss of red plus the gain of green, the negative of green's loss, window by window and for the full swap.
    for window, red, green in zip(both.windows, run["red"].windows, run["green"].windows):
        assert window.effects == pytest.approx([r - g for r, g in zip(red.effects, green.effects)], abs=1e-6)
    assert both.full_swap_effect == pytest.approx(run["red"].full_swap_effect - run["green"].full_swap_effect, abs=1e-6)
    assert any(abs(g) > 1e-4 for w in run["green"].windows for g in w.effects)  # the gain term is not zero here


def test_adopting_needs_a_scorer_that_reads_concepts(tiny_adapters):
    with pytest.raises(LocoeditError, match="the pixel scorer cannot tell whether 'green' appears"):
        localize(request(adopt="green"), adapter=tiny_adapters["sd"], scorer=PixelScorer())
