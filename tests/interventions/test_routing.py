from contextlib import contextmanager

import pytest
import torch

from locoedit.interventions import Intervention
from locoedit.interventions.routing import (
    RoutedAttnProcessor,
    Routing,
    RoutingController,
    TextRouting,
    routed_processors,
)
from locoedit.models import GenerationSettings

FAMILIES = ["sd", "sdxl", "if", "pixart"]
SETTINGS = GenerationSettings(3, 4.0, 16, 16)
PROMPTS = ["a house in the style of van gogh", "a red circle"]
TARGETS = ["a house", "a circle"]


@pytest.mark.parametrize("family", FAMILIES)
def test_empty_routing_equals_no_routing(tiny_adapters, family):
    adapter = tiny_adapters[family]
    prompts, targets = adapter.encode(PROMPTS), adapter.encode(TARGETS)
    plain = adapter.generate(prompts, [0, 1], SETTINGS)
    routed = adapter.generate(prompts, [0, 1], SETTINGS, [TextRouting(Routing(((), ())), targets.conditional)])
    assert torch.equal(plain, routed)


@pytest.mark.parametrize("family", FAMILIES)
def test_routing_every_layer_equals_generating_the_target(tiny_adapters, family):
    adapter = tiny_adapters[family]
    prompts, targets = adapter.encode(PROMPTS), adapter.encode(TARGETS)
    # SD-XL and IF also read text outside cross-attention, which only route_added_text reroutes.
    routing = Routing.uniform(range(len(adapter.layers)), 2, route_added_text=True)
    routed = adapter.generate(prompts, [0, 1], SETTINGS, [TextRouting(routing, targets.conditional)])
    target_images = adapter.generate(targets, [0, 1], SETTINGS)
    original_images = adapter.generate(prompts, [0, 1], SETTINGS)
    assert (routed - target_images).abs().max() < 1e-5
    assert (routed - original_images).abs().max() > 1e-3  # the test can fail: routing changes the images


@pytest.mark.parametrize("family", ["sdxl", "if"])
def test_added_text_routing_is_off_by_default(tiny_adapters, family):
    adapter = tiny_adapters[family]
    prompts, targets = adapter.encode(PROMPTS), adapter.encode(TARGETS)
    every_layer = range(len(adapter.layers))
    paper = adapter.generate(
        prompts, [0, 1], SETTINGS, [TextRouting(Routing.uniform(every_layer, 2), targets.conditional)]
    )
    target_images = adapter.generate(targets, [0, 1], SETTINGS)
    assert (paper - target_images).abs().max() > 1e-4


def test_only_the_conditional_half_is_rerouted():
    routing = Routing(((0,), ()))
    target = torch.ones(2, 3, 4)
    controller = RoutingController(routing, 2, target)
    states = torch.zeros(4, 3, 4)  # [unconditional x 2, conditional x 2]
    rerouted, _ = controller.reroute(0, states, None)
    assert torch.equal(rerouted[:2], states[:2])  # unconditional rows untouched
    assert torch.equal(rerouted[2], target[0])  # conditional row 0 reads the target at layer 0
    assert torch.equal(rerouted[3], states[3])  # row 1 is not routed
    assert torch.equal(controller.reroute(1, states, None)[0], states)  # layer 1 is not routed for anyone


def test_processors_are_restored_when_generation_raises(tiny_adapters):
    adapter = tiny_adapters["sd"]
    before = dict(adapter.denoiser.attn_processors)
    controller = RoutingController(Routing(((0, 1),)), len(adapter.layers), torch.zeros(1, 16, 16))
    with pytest.raises(RuntimeError, match="boom"), routed_processors(adapter.denoiser, adapter.layers, controller):
        raise RuntimeError("boom")
    assert adapter.denoiser.attn_processors == before


class ReplacesProcessors(Intervention):
    """What some loaders do: set_attn_processor(AttnProcessor2_0()) on every layer, after routing is installed."""

    @contextmanager
    def installed(self, adapter):
        from diffusers.models.attention_processor import AttnProcessor2_0

        previous = adapter.denoiser.attn_processors
        adapter.denoiser.set_attn_processor(AttnProcessor2_0())
        try:
            yield
        finally:
            adapter.denoiser.set_attn_processor(previous)


def test_processors_replaced_during_generation_are_detected(tiny_adapters):
    adapter = tiny_adapters["sd"]
    prompts = adapter.encode(["a red circle"])
    before = dict(adapter.denoiser.attn_processors)
    routing = TextRouting(Routing(((0,),)), prompts.conditional)
    with pytest.raises(RuntimeError, match="never ran"):
        adapter.generate(prompts, [0], SETTINGS, [routing, ReplacesProcessors()])
    assert adapter.denoiser.attn_processors == before


def test_routing_names_a_missing_layer():
    with pytest.raises(ValueError, match="layer indices \\[9\\]; the model has layers 0..3"):
        RoutingController(Routing(((9,),)), 4, torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="layer indices \\[4\\]; the model has layers 0..3"):  # one past the end
        RoutingController(Routing(((3,), (4,))), 4, torch.zeros(2, 2, 3))


def test_mismatched_batches_are_refused_naming_both_sizes(tiny_adapters):
    with pytest.raises(ValueError, match="routing has 2 batch elements but the target states have 1"):
        RoutingController(Routing(((0,), ())), 4, torch.zeros(1, 2, 3))
    controller = RoutingController(Routing(((0,), ())), 4, torch.zeros(2, 2, 3))
    with pytest.raises(
        RuntimeError,
        match="layer 0 got 3 text rows for a routing of 2; pass exactly one prompt embedding per routed batch element",
    ):
        controller.reroute(0, torch.zeros(3, 2, 3), None)
    adapter = tiny_adapters["sd"]
    prompts = adapter.encode(["a red circle"])
    with pytest.raises(ValueError, match="routing covers 2 rows but 1 prompts were given"):
        adapter.generate(
            prompts, [0], SETTINGS, [TextRouting(Routing(((0,), ())), adapter.encode(TARGETS).conditional)]
        )


def test_the_routed_processor_passes_every_other_argument_through():
    # diffusers passes extra keyword arguments (cross_attention_kwargs, temb) to processors; the wrapper must not
    # drop any, positional or keyword.
    received = []
    inner = lambda *args, **kwargs: received.append((args, kwargs)) or "out"
    controller = RoutingController(Routing(((0,),)), 2, torch.ones(1, 2, 3))
    processor = RoutedAttnProcessor(inner, 0, controller)
    assert processor("attn", "hidden", torch.zeros(2, 2, 3), None, "extra", temb="t", scale=0.5) == "out"
    ((args, kwargs),) = received
    assert args[:2] == ("attn", "hidden") and args[3:] == (None, "extra") and kwargs == {"temb": "t", "scale": 0.5}
    assert torch.equal(args[2], torch.cat([torch.zeros(1, 2, 3), torch.ones(1, 2, 3)]))  # rerouted text states


@pytest.mark.parametrize("steps", [1, 3])
def test_each_routed_layer_reads_the_target_once_per_step(tiny_adapters, steps):
    adapter = tiny_adapters["sd"]
    routing = TextRouting(Routing(((0, 2),)), adapter.encode(TARGETS[:1]).conditional)
    adapter.generate(adapter.encode(PROMPTS[:1]), [0], GenerationSettings(steps, 4.0, 16, 16), [routing])
    # One call per denoising step (both guidance halves in one batch); layers that are not routed are not wrapped.
    expected = [steps if i in (0, 2) else 0 for i in range(len(adapter.layers))]
    assert routing._controller.calls.tolist() == expected


def test_routing_is_data():
    routing = Routing(((3, 2, 2), ()), route_added_text=True)
    assert routing.target_layers == ((2, 3), ())
    assert routing.to_json() == {"target_layers": [[2, 3], []], "route_added_text": True}
    assert routing == Routing(((2, 3), ()), True)
