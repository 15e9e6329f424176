"""Preservation as a second-moment term: the closed form, its rank, its sources, the statistics cache, bad input."""

import math
from dataclasses import replace

import pytest
import torch

torch.set_num_threads(1)

from locoedit.core.errors import LocoeditError
from locoedit.edit import (
    EditRequest,
    compute_edit,
    preservation,
)
from locoedit.edit.closed_form import Regulariser, closed_form_edit, edit_factors, edit_objective
from locoedit.edit.key_value import build_preservation, build_rows
from locoedit.edit.preservation import (
    CorpusStats,
    compute_stats,
    corpus_stats,
    moment_sums,
    names_concept,
    neighbour_concepts,
    neighbour_prompts,
    spaces_of,
)
from locoedit.models import adapter_for, load_adapter
from locoedit.testing import TINY_PIPELINES

CORPUS = (
    "a red car",
    "a green tree",
    "a house by a lake",
    "a dog in the snow",
    "a photo of a cat",
    "a painting of a boat in the style of monet",
)


def _problem(out=5, inputs=8, rows=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inputs, generator=g, dtype=torch.float64) / math.sqrt(inputs)
    x_o = torch.randn(rows, inputs, generator=g, dtype=torch.float64)
    x_t = torch.randn(rows, inputs, generator=g, dtype=torch.float64)
    kept = torch.randn(20, inputs, generator=g, dtype=torch.float64)
    return w, x_o, x_t, kept.T @ kept / 20  # C: a mean second moment, full rank


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return adapter_for(TINY_PIPELINES["sd"](tmp_path_factory.mktemp("sd"), seed=0))


@pytest.fixture(scope="module")
def toy():
    return load_adapter("toyworld", device="cpu")


def request(**overrides):
    base = dict(model="tiny", concepts=("van gogh",), targets=("a painting",), kind="style", layers=(1, 2))
    return EditRequest(**{**base, **overrides})


def test_the_closed_form_is_the_minimum_gradient_descent_finds():
    w, x_o, x_t, moment = _problem()
    regulariser = Regulariser(0.3, 2.0 * moment)
    closed = closed_form_edit(w, x_o, x_t, regulariser)

    # Plain gradient descent on ||X_o W'^T - X_t W^T||^2 + tr((W' - W) C (W' - W)^T) + lam ||W' - W||^2, with the
    # step 1 / (largest eigenvalue of the Hessian), from W' = W.
    hessian = 2 * (x_o.T @ x_o + regulariser.matrix(8, w.device))
    step = 1.0 / float(torch.linalg.eigvalsh(hessian).max())
    found = w.clone().requires_grad_(True)
    for _ in range(20000):
        objective = ((x_o @ found.T - x_t @ w.T) ** 2).sum() + (
            (found - w) @ regulariser.matrix(8, w.device) * (found - w)
        ).sum()
        (gradient,) = torch.autograd.grad(objective, found)
        with torch.no_grad():
            found -= step * gradient
    assert torch.allclose(found.detach(), closed, atol=1e-6, rtol=0)
    assert edit_objective(w, closed, x_o, x_t, regulariser) <= edit_objective(w, found.detach(), x_o, x_t, regulariser)
    plain = closed_form_edit(w, x_o, x_t, 0.3)
    assert (closed - plain).abs().max() > 1e-2  # the covariance term changes the answer


def test_the_update_has_rank_at_most_the_concept_rows_whatever_is_preserved():
    w, x_o, x_t, moment = _problem(out=12, inputs=10, rows=3)
    update, objective = edit_factors(w, x_o, x_t, Regulariser(0.1, 5.0 * moment))
    assert update.rank == 3 and torch.linalg.matrix_rank(update.up @ update.down) == 3
    exact = closed_form_edit(w, x_o, x_t, Regulariser(0.1, 5.0 * moment))
    torch.testing.assert_close(w + update.up @ update.down, exact, rtol=1e-12, atol=1e-12)
    assert objective == pytest.approx(edit_objective(w, exact, x_o, x_t, Regulariser(0.1, 5.0 * moment)), rel=1e-9)


def test_an_edit_with_every_source_stays_factored_and_preserves_what_it_is_told(sd):
    # The explicit prompts used to be stacked as rows (rank n + p); in C they leave the rank at n.
    kept = CORPUS[:3]
    plain = compute_edit(sd, request(preserve_neighbours=0.0, preserve_general=0.0))
    preserved = compute_edit(sd, request(preserve=kept, preserve_scale=10.0, preserve_corpus=None))
    rows = build_rows(sd, request())
    assert {u.rank for u in preserved.factors.values()} == {len(rows.concept)}
    assert preserved.settings["preserve_prompts"]["explicit"] == 3
    counts = preserved.settings["preserve_prompts"]
    assert counts["neighbours"] > 0 and counts["general"] > 0  # the tiny encoder reads 16 tokens: fewer fit
    layer = sd.layers[1]
    x = preservation.padded_rows(sd, kept).at(layer)
    for projection in layer.edit_projections:
        name = f"{layer.name}.{projection}.weight"
        weight = getattr(layer.module, projection).weight.detach().double()

        def moved(delta):
            return float(torch.linalg.norm(x @ (delta.edited_values(sd)[name].double() - weight).T))

        assert moved(preserved) < 0.5 * moved(plain)


def test_neighbours_are_the_concepts_group_and_replace_the_concept_in_the_edits_prompts(toy, sd):
    assert neighbour_concepts(toy, ("triangle",), "object") == ("circle", "square", "cross")
    assert neighbour_concepts(toy, ("red",), "object") == ("green", "blue", "yellow")
    assert neighbour_concepts(toy, ("in the style of klimt",), "style") == (
        "in the style of kandinsky",
        "in the style of hokusai",
    )
    # A concept in no group: every group of its kind; several edited concepts are all left out.
    assert set(neighbour_concepts(toy, ("the moon",), "fact")) == {"the sun", "the ocean", "the forest", "the flag"}
    assert neighbour_concepts(toy, ("the sun", "the flag"), "fact") == ("the ocean", "the forest")
    assert neighbour_concepts(toy, ("triangle",), "object", given=("cross", "triangle")) == ("cross",)
    assert "Claude Monet" in neighbour_concepts(sd, ("Van Gogh",), "style")  # the shipped lists: a model without any
    assert neighbour_prompts(("triangle",), ("a red {c} on black", "a {c}"), ("circle", "cross")) == [
        "a red circle on black",
        "a circle",
        "a red cross on black",
        "a cross",
    ]


def test_the_general_corpus_leaves_out_prompts_that_name_the_concept(toy):
    assert names_concept("the sun on black", "the sun") and names_concept("a sun", "the sun")
    assert names_concept("a Red square", "red") and not names_concept("a reddish square", "red")
    req = EditRequest(
        model="toyworld", concepts=("triangle",), targets=("cross",), layers=(2,), preserve_neighbours=0.0
    )
    corpus = preservation.read_corpus(toy.recommended.edit.corpus)
    kept = [p for p in corpus if "triangle" not in p]
    assert 0 < len(kept) < len(corpus)
    got = build_preservation(toy, req, [toy.layers[2]])
    sums, rows = moment_sums(toy, kept, spaces_of([toy.layers[2]]))
    assert got.counts["general"] == len(kept)
    torch.testing.assert_close(got.moments["text"], req.preserve_general * sums["text"] / rows, rtol=1e-9, atol=1e-12)


def test_statistics_are_cached_reused_and_refused_for_another_model_or_corpus(sd, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCOEDIT_CACHE", str(tmp_path / "cache"))
    first = corpus_stats(sd, CORPUS)
    assert len(list((tmp_path / "cache" / "stats").iterdir())) == 1

    def no_recomputing(*args):
        raise AssertionError("the cached statistics should have been reused")

    monkeypatch.setattr(preservation, "_compute", no_recomputing)
    again = corpus_stats(sd, CORPUS)
    assert again.rows == first.rows and torch.equal(again.sums["text"], first.sums["text"])
    monkeypatch.undo()

    path = compute_stats(sd, CORPUS).save(tmp_path / "sd.safetensors")
    other = adapter_for(TINY_PIPELINES["sd"](tmp_path / "other", seed=1))  # same architecture, other weights
    with pytest.raises(LocoeditError, match="computed for another model's text encoders; compute them for this model"):
        corpus_stats(other, CORPUS, path)
    with pytest.raises(LocoeditError, match="computed on another corpus"):
        corpus_stats(sd, CORPUS[:-1], path)
    assert CorpusStats.load(path).prompts == len(CORPUS)
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(LocoeditError, match="cannot be read .* compute it again with `locoedit stats`"):
        CorpusStats.load(tmp_path / "bad.safetensors")


def test_bad_corpora_get_one_clear_line(sd, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(LocoeditError, match="holds no prompts; write one prompt per line"):
        compute_edit(sd, request(preserve_corpus=str(empty)))
    naming = tmp_path / "naming.txt"
    naming.write_text("van gogh\na house by van gogh\n")
    with pytest.raises(LocoeditError, match="every prompt of preservation corpus .* names an edited concept"):
        compute_edit(sd, request(preserve_corpus=str(naming)))
    with pytest.raises(LocoeditError, match="does not exist; give a text file with one prompt per line"):
        compute_edit(sd, request(preserve_corpus=str(tmp_path / "missing.txt")))


def test_removing_a_style_with_an_empty_target_and_the_default_templates(toy, sd):
    # Every toy-world style template keeps words besides the concept, so all of them are localized and edited.
    req = EditRequest(
        model="toyworld",
        concepts=("in the style of hokusai",),
        targets=("",),
        kind="style",
        auto_steps=3,
        auto_seeds=(0,),
    )
    delta = compute_edit(toy, req)
    assert delta.layers and delta.settings["preserve_prompts"]["neighbours"] > 0
    assert all(target for _, target in delta.settings["prompt_pairs"])
    # The shipped templates for real models start with "{c}", which is empty without the concept: LocoGen leaves that
    # pair out; the edit keeps it.
    pairs = request(targets=("",)).pairs()
    assert [p.target_prompt for p in pairs][0] == ""
    localization = request(targets=("",)).localization(pairs)
    assert len(localization.prompts) == len(pairs) - 1 and "" not in localization.targets


def test_a_folder_that_names_a_missing_corpus_is_refused(toy, tmp_path):
    import shutil

    from locoedit.toyworld import MODEL_DIR

    folder = tmp_path / "toy"
    shutil.copytree(MODEL_DIR, folder)
    (folder / "preservation_corpus.txt").unlink()
    with pytest.raises(LocoeditError, match="names the preservation corpus 'preservation_corpus.txt', which is not in"):
        load_adapter(str(folder), device="cpu")


def test_no_preservation_source_means_the_plain_closed_form(sd):
    req = request(preserve_neighbours=0.0, preserve_general=0.0, preserve_nearest=0)
    assert build_preservation(sd, req, sd.layers[1:3]).moments == {}
    delta = compute_edit(sd, replace(req, token="last-subject"))
    rows = build_rows(sd, req)
    layer = sd.layers[1]
    sources, targets = rows.matrices(layer)
    weight = layer.module.to_k.weight
    expected = closed_form_edit(weight, sources, targets, req.lambda_key)
    torch.testing.assert_close(
        delta.edited_values(sd)[f"{layer.name}.to_k.weight"].double(), expected, rtol=1e-5, atol=1e-6
    )
