"""LocoEdit's closed form, row choice, preservation and every family, on tiny offline pipelines."""

import math

import pytest
import torch

torch.set_num_threads(1)

from locoedit.core.errors import LocoeditError
from locoedit.core.lowrank import rows_per_block
from locoedit.delta.file import tensor_sha256
from locoedit.edit import EditRequest, compute_edit
from locoedit.edit.closed_form import (
    closed_form_edit,
    edit_factors,
    edit_matrix,
    edit_objective,
    to_model_dtype,
)
from locoedit.edit.key_value import build_preservation, build_rows
from locoedit.edit.rows import (
    aligned_positions,
    all_real_positions,
    encode_rows,
    prompt_pairs,
    stretch_alignment,
)
from locoedit.edit.templates import prompt_templates
from locoedit.models import adapter_for
from locoedit.testing import TINY_PIPELINES

FAMILIES = tuple(TINY_PIPELINES)
UNRELATED = ("a red car", "a green tree", "the blue circle", "a yellow square on a house", "a cat in the photo")


def tiny(family, tmp_path, seed=0, dtype=None):
    pipe = TINY_PIPELINES[family](tmp_path / f"{family}-{seed}", seed=seed)
    if dtype is not None:
        pipe = pipe.to(dtype)
    return adapter_for(pipe)


def request(**overrides):
    """An edit request; without preservation unless asked (its own tests below), so the concept rows map exactly."""
    base = dict(
        model="tiny",
        concepts=("van gogh",),
        targets=("a painting",),
        kind="style",
        layers=(1,),
        preserve_neighbours=0.0,
        preserve_general=0.0,
        preserve_nearest=0,
    )
    base.update(overrides)
    return EditRequest(**base)


def _problem(out, inputs, rows, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inputs, generator=g, dtype=torch.float64) / math.sqrt(inputs)
    x_o = torch.randn(rows, inputs, generator=g, dtype=torch.float64)
    x_t = x_o + 0.5 * torch.randn(rows, inputs, generator=g, dtype=torch.float64)
    return w, x_o, x_t


def _gradient_descent(w, x_o, x_t, lam, steps=4000):
    # Plain gradient descent on ||X_o V^T - X_t W^T||^2 + lam ||V - W||^2, step 1/L.
    lipschitz = 2 * (torch.linalg.matrix_norm(x_o, ord=2) ** 2 + lam)
    v = w.clone()
    for _ in range(steps):
        grad = 2 * (v @ x_o.T - w @ x_t.T) @ x_o + 2 * lam * (v - w)
        v = v - grad / lipschitz
    return v


@pytest.mark.parametrize("rows", [4, 20])  # fewer rows than inputs (n x n solve) and more (in x in solve)
def test_closed_form_equals_gradient_descent_minimum(rows):
    w, x_o, x_t = _problem(out=6, inputs=12, rows=rows)
    lam = 0.7
    solved = closed_form_edit(w, x_o, x_t, lam)
    descended = _gradient_descent(w, x_o, x_t, lam)
    assert torch.linalg.norm(solved - descended) / torch.linalg.norm(solved) < 1e-6
    # The textbook expression (W X_t^T X_o + lam W)(X_o^T X_o + lam I)^{-1}, by a solve, agrees too.
    system = x_o.T @ x_o + lam * torch.eye(12, dtype=torch.float64)
    textbook = torch.linalg.solve(system, (w @ x_t.T @ x_o + lam * w).T).T
    torch.testing.assert_close(solved, textbook, rtol=1e-10, atol=1e-12)
    best = edit_objective(w, solved, x_o, x_t, lam)
    assert best <= edit_objective(w, descended, x_o, x_t, lam) * (1 + 1e-12)
    assert best < edit_objective(w, w, x_o, x_t, lam)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_blockwise_edit_matrix_is_the_closed_form_rounded_once(dtype):
    w, x_o, x_t = _problem(out=300, inputs=4096, rows=6, seed=3)  # 300 rows: blocks of 128, 128 and 44 rows
    assert rows_per_block(w.shape) == 128
    weight, x_o, x_t = w.to(dtype), x_o.float(), x_t.float()  # rows as a float32 text encoder gives them
    exact = closed_form_edit(weight, x_o, x_t, 0.2)
    new, objective = edit_matrix(weight, x_o, x_t, 0.2)
    assert new.dtype == dtype and new.is_contiguous()
    eps = torch.finfo(dtype).eps  # at most 1 ulp apart (blockwise BLAS may round float64 sums differently)
    torch.testing.assert_close(new, exact.to(dtype), rtol=eps, atol=eps * float(exact.abs().max()))
    assert abs(objective - edit_objective(weight, exact, x_o, x_t, 0.2)) < 1e-9 * objective
    out = torch.empty_like(weight)
    assert edit_matrix(weight, x_o, x_t, 0.2, out=out)[0] is out and torch.equal(out, new)


@pytest.mark.parametrize("rows", [2, 20])  # the factored path (n < in) and the dense one
def test_edit_matrix_refuses_overflow_in_half_precision_naming_the_parameter(rows):
    w, x_o, x_t = _problem(out=8, inputs=16, rows=rows)
    with pytest.raises(LocoeditError, match="^w.to_k: the edited matrix has entries beyond what torch.float16 holds"):
        edit_matrix(w.half(), x_o, x_t * 1e6, 1e-3, name="w.to_k")


def test_edit_factors_are_the_closed_form_update_computed_blockwise():
    w, x_o, x_t = _problem(out=300, inputs=4096, rows=6, seed=4)  # three blocks of rows, as above
    update, objective = edit_factors(w.float(), x_o, x_t, 0.3)  # no workspace given: it makes its own
    exact = closed_form_edit(w.float(), x_o, x_t, 0.3)
    assert update.up.shape == (300, 6) and torch.allclose(update.down, x_o / 0.3, rtol=1e-15, atol=0)  # V = X_o A^{-1}
    torch.testing.assert_close(w.float().double() + update.up @ update.down, exact, rtol=1e-12, atol=1e-12)
    assert objective == pytest.approx(edit_objective(w.float(), exact, x_o, x_t, 0.3), rel=1e-9)
    with pytest.raises(ValueError, match=r"needs fewer rows than inputs \(got 16 rows of width 16\)"):
        edit_factors(*_problem(out=8, inputs=16, rows=16), 0.3)


def test_closed_form_is_float64_for_low_precision_inputs():
    w, x_o, x_t = _problem(out=8, inputs=16, rows=3)
    result = closed_form_edit(w.to(torch.bfloat16), x_o.half(), x_t.half(), 0.1)
    assert result.dtype == torch.float64


def test_unrelated_inputs_move_only_through_the_concept_rows_span():
    # Stated bound: for any input x, ||(W_new - W) x|| <= ||W_new - W||_2 * ||P x||, P the projector onto the span
    # of the concept rows. At text-encoder width (768) with 8 concept rows, random inputs therefore move by
    # about sqrt(8 / 768) of the concept rows' movement: we require under 0.15 of it on average, and every random
    # input's key to move by under 15% (measured: mean 0.05, max 0.09; the concept rows' keys move by about 0.5).
    w, x_o, x_t = _problem(out=320, inputs=768, rows=8, seed=1)
    new = closed_form_edit(w, x_o, x_t, 0.1)
    delta = new - w
    unrelated = torch.randn(200, 768, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    basis, _ = torch.linalg.qr(x_o.T)  # [768, 8]
    projected = unrelated @ basis  # [200, 8], coordinates of P x
    moved = (unrelated @ delta.T).norm(dim=1)
    assert (moved <= torch.linalg.matrix_norm(delta, ord=2) * projected.norm(dim=1) + 1e-9).all()
    relative = moved / (unrelated @ w.T).norm(dim=1)
    concept_relative = (x_o @ delta.T).norm(dim=1) / (x_o @ w.T).norm(dim=1)
    assert relative.max() < 0.15
    assert relative.mean() < 0.15 * concept_relative.mean()


@pytest.mark.parametrize("family", FAMILIES)
def test_unrelated_prompt_keys_obey_the_span_bound(family, tmp_path):
    adapter = tiny(family, tmp_path)
    req = request()
    delta = compute_edit(adapter, req)
    layer = adapter.layers[1]
    concept = build_rows(adapter, req).concept.at(layer)  # [n, in]
    unrelated = encode_rows(adapter, list(UNRELATED), all_real_positions(adapter, UNRELATED)).at(layer)
    basis, _ = torch.linalg.qr(concept.T)
    edited = delta.edited_values(adapter)
    for projection in layer.edit_projections:
        weight = getattr(layer.module, projection).weight.detach().double()
        change = edited[f"{layer.name}.{projection}.weight"].double() - weight
        bound = torch.linalg.matrix_norm(change, ord=2) * (unrelated @ basis).norm(dim=1)
        # float32 rounding of the stored matrix adds at most ~1e-6 relative
        assert ((unrelated @ change.T).norm(dim=1) <= bound * (1 + 1e-4) + 1e-5).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_concept_rows_map_to_the_targets_outputs(family, tmp_path):
    adapter = tiny(family, tmp_path)
    req = request(lambda_key=1e-6, lambda_value=1e-6)
    rows = build_rows(adapter, req)
    layer = adapter.layers[1]
    sources, targets = rows.concept.at(layer).float(), rows.target.at(layer).float()  # [n, in]
    modules = [getattr(layer.module, projection) for projection in layer.edit_projections]
    with torch.no_grad():
        wanted = [module(targets) for module in modules]  # the target's keys and values, bias included
        before = [module(sources) for module in modules]
        delta = compute_edit(adapter, req)
        with delta.apply(adapter):
            after = [module(sources) for module in modules]
    for want, old, new in zip(wanted, before, after):
        assert torch.linalg.norm(new - want) / torch.linalg.norm(want) < 1e-3
        assert torch.linalg.norm(old - want) / torch.linalg.norm(want) > 0.05  # it was not so before


@pytest.mark.parametrize("token", ["last-subject", "from-concept"])  # factored (n < in); dense (n >= in)
def test_the_key_and_the_value_projection_each_use_their_own_lambda(token, tmp_path):
    # Lambdas 100x apart, so that solving a projection with the other one's lambda moves it far beyond round-off;
    # with every preservation source on, so that C is part of the textbook formula too.
    adapter = tiny("sd", tmp_path)
    req = request(
        layers=(1, 2),
        lambda_key=0.05,
        lambda_value=5.0,
        token=token,
        preserve=("a dog",),
        preserve_neighbours=2.0,
        preserve_general=3.0,
    )
    delta = compute_edit(adapter, req)
    assert bool(delta.factors) == (token == "last-subject")
    rows, edited = build_rows(adapter, req), delta.edited_values(adapter)
    preservation = build_preservation(adapter, req, [adapter.layers[1], adapter.layers[2]])
    assert all(preservation.counts.values())
    for layer in (adapter.layers[1], adapter.layers[2]):
        sources, targets = (m.double() for m in rows.matrices(layer))
        moment = preservation.moments["text"]
        for projection, own, other in zip(layer.edit_projections, (0.05, 5.0), (5.0, 0.05)):
            weight = getattr(layer.module, projection).weight.detach().double()

            def textbook(lam):  # (W X_t^T X_o + W A)(X_o^T X_o + A)^{-1}, A = C + lam I, written out here
                a = moment + lam * torch.eye(sources.shape[1], dtype=torch.float64)
                return torch.linalg.solve(sources.T @ sources + a, (weight @ targets.T @ sources + weight @ a).T).T

            got = edited[f"{layer.name}.{projection}.weight"].double()
            expected, swapped = textbook(own), textbook(other)
            error = torch.linalg.norm(got - expected)
            assert error <= 1e-5 * torch.linalg.norm(expected), projection  # float32 rounding of the result
            assert torch.linalg.norm(swapped - expected) > 100 * error, projection  # the lambdas really matter


def _snapshot(pipe) -> dict[str, str]:
    """sha256 of every tensor of every module of the pipeline, by component and name."""
    hashes = {}
    for component, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            for name, tensor in module.state_dict().items():
                hashes[f"{component}/{name}"] = tensor_sha256(tensor)
    return hashes


@pytest.mark.parametrize("family", FAMILIES)
def test_only_the_chosen_layers_matrices_change_bit_for_bit_elsewhere(family, tmp_path):
    adapter = tiny(family, tmp_path)
    before = _snapshot(adapter.pipe)
    delta = compute_edit(adapter, request(layers=(0, 2), preserve=("a dog",)))
    assert _snapshot(adapter.pipe) == before  # computing an edit leaves the pipeline untouched
    projections = adapter.layers[0].edit_projections
    expected = {f"{adapter.denoiser_name}/{adapter.layers[i].name}.{p}.weight" for i in (0, 2) for p in projections}
    assert {f"{adapter.denoiser_name}/{name}" for name in delta.parameters} == expected
    handle = delta.apply(adapter.pipe)
    after = _snapshot(adapter.pipe)
    assert {key for key in before if before[key] != after[key]} == expected
    handle.revert()
    assert _snapshot(adapter.pipe) == before


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_pipelines_are_edited_in_their_dtype(family, dtype, tmp_path):
    adapter = tiny(family, tmp_path, dtype=dtype)
    delta = compute_edit(adapter, request(token="all", preserve=("a dog",)))
    for name, tensor in delta.edited_values(adapter).items():
        assert tensor.dtype == dtype and torch.isfinite(tensor).all(), name
    with delta.apply(adapter):
        layer = adapter.layers[1]
        assert getattr(layer.module, layer.edit_projections[0]).weight.dtype == dtype


def test_values_beyond_the_dtype_are_refused_not_overflowed():
    like = torch.zeros(2, 2, dtype=torch.float16)
    with pytest.raises(LocoeditError, match="beyond what torch.float16 holds"):
        to_model_dtype(torch.full((2, 2), 1e6, dtype=torch.float64), like, "w")
    assert to_model_dtype(torch.full((2, 2), 3.0, dtype=torch.float64), like, "w").dtype == torch.float16


@pytest.mark.parametrize("family", ["sd", "if"])
def test_preservation_keeps_preserved_prompts_closer(family, tmp_path):
    adapter = tiny(family, tmp_path)
    kept = UNRELATED[:3]
    layer = adapter.layers[1]
    rows = encode_rows(adapter, list(kept), all_real_positions(adapter, kept)).at(layer)  # [rows, in]

    def movement(delta):
        total = 0.0
        for projection in layer.edit_projections:
            weight = getattr(layer.module, projection).weight.detach().double()
            change = delta.edited_values(adapter)[f"{layer.name}.{projection}.weight"].double() - weight
            total += float(torch.linalg.norm(rows @ change.T) / torch.linalg.norm(rows @ weight.T))
        return total

    without = movement(compute_edit(adapter, request()))
    with_preservation = movement(compute_edit(adapter, request(preserve=kept)))
    stronger = movement(compute_edit(adapter, request(preserve=kept, preserve_scale=10.0)))
    assert with_preservation < 0.5 * without
    assert stronger < with_preservation


# ------------------------------------------------------------------------------------------------ which rows


def test_style_and_object_templates_are_the_papers():
    assert prompt_templates("style") == (
        "{c}",
        "a painting in the style of {c}",
        "a photo in the style of {c}",
        "a picture in the style of {c}",
    )
    assert prompt_templates("object") == ("an image of {c}", "a photo of {c}", "a picture of {c}")
    assert "{c}" in prompt_templates("fact")


def test_stretch_alignment():
    assert stretch_alignment(3, 3) == [0, 1, 2]
    assert stretch_alignment(1, 3) == [2]  # a single concept token pairs with the target's last (subject) token
    assert stretch_alignment(3, 1) == [0, 0, 0]
    assert stretch_alignment(3, 2) == [0, 0, 1] or stretch_alignment(3, 2) == [0, 1, 1]
    assert stretch_alignment(2, 4) == [0, 3]  # first with first, last with last


def test_token_choices_pick_the_documented_positions(tmp_path):
    adapter = tiny("sd", tmp_path)
    # tiny CLIP: <start> a photo of red car <end>; the target "blue tree" has as many tokens
    (pair,) = prompt_pairs(("red car",), ("blue tree",), ("a photo of {c} in the house",))
    assert pair.target_prompt == "a photo of blue tree in the house"
    assert aligned_positions(adapter, pair, "last-subject") == ([5], [5])
    assert aligned_positions(adapter, pair, "all") == ([4, 5], [4, 5])
    eos = adapter.tokenize(pair.prompt).eos
    assert eos == 9 and aligned_positions(adapter, pair, "eos") == ([9], [9])
    # ... and every later row up to the tokenizer's padded length (16), which the UNet attends to
    assert aligned_positions(adapter, pair, "from-concept") == (list(range(4, 16)), list(range(4, 16)))


def test_different_token_counts_are_stretched(tmp_path):
    adapter = tiny("sd", tmp_path)
    (pair,) = prompt_pairs(("red car",), ("dog",), ("a photo of {c} in the house",))
    # two concept tokens, one target token: both pair with it
    assert aligned_positions(adapter, pair, "all") == ([4, 5], [4, 4])
    assert aligned_positions(adapter, pair, "last-subject") == ([5], [4])
    # the tails to the padded length differ (10 rows vs 11): stretched, first with first and last with last
    assert aligned_positions(adapter, pair, "from-concept") == (
        list(range(4, 16)),
        [4, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15],
    )


def test_an_empty_target_removes_the_concept(tmp_path):
    adapter = tiny("sd", tmp_path)
    middle, end = prompt_pairs(("red car",), ("",), ("a photo of {c} in the house", "a house of a {c}"))
    assert middle.target_prompt == "a photo of in the house" and end.target_prompt == "a house of a"
    # <start> a photo of red car in the house <end>: the concept's rows map to what now stands in its place
    assert aligned_positions(adapter, middle, "all") == ([4, 5], [4, 4])
    end_eos = adapter.tokenize(end.target_prompt).eos
    assert aligned_positions(adapter, end, "last-subject") == ([6], [end_eos])


@pytest.mark.parametrize("family", ["if", "pixart"])
def test_t5_families_find_concepts_after_their_lowercasing(family, tmp_path):
    adapter = tiny(family, tmp_path)
    (pair,) = prompt_pairs(("Red Car",), ("dog",), ("A photo of {c}",))
    tokens = adapter.tokenize(pair.prompt)
    assert tokens.text == "a photo of red car"
    concept, target = aligned_positions(adapter, pair, "all")
    assert [tokens.ids[i] for i in concept] == list(adapter.tokenize("red car").ids[:-1])
    assert len(target) == 2


def test_plain_prompts_and_several_concepts(tmp_path):
    adapter = tiny("sd", tmp_path)
    req = request(
        concepts=("van gogh", "monet"),
        targets=("a painting", "picasso"),
        prompts=("{c}", "a house in the style of monet", "a dog in the style of van gogh"),
    )
    rows = build_rows(adapter, req)
    assert [(p.prompt, p.target_prompt) for p in rows.pairs] == [
        ("van gogh", "a painting"),
        ("a dog in the style of van gogh", "a dog in the style of a painting"),
        ("monet", "picasso"),
        ("a house in the style of monet", "a house in the style of picasso"),
    ]
    assert len(rows.concept) == len(rows.target) == 4
    delta = compute_edit(adapter, req)
    assert delta.settings["concepts"] == ["van gogh", "monet"] and delta.settings["concept_rows"] == 4


@pytest.mark.parametrize("family", ["sd", "pixart"])
def test_images_change_under_the_edit_and_come_back_bit_for_bit_after_revert(family, tmp_path):
    from locoedit.models import GenerationSettings

    adapter = tiny(family, tmp_path)
    settings = GenerationSettings(2, 5.0, *(2 * [adapter.default_image_size()]))
    prompts = adapter.encode(["a painting in the style of van gogh"])

    def images():
        return adapter.generate(prompts, [0], settings)

    before = images()
    delta = compute_edit(adapter, request(layers=(0, 1, 2), lambda_key=1e-3, lambda_value=1e-3, token="from-concept"))
    with delta.apply(adapter):
        edited = images()
    assert not torch.equal(edited, before)
    assert torch.equal(images(), before)
