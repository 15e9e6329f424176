"""The toy world's vocabulary, captions and renderer (numpy only, fast)."""

import numpy as np
import pytest

from locoedit.toyworld import (
    ATTRIBUTES,
    caption_for,
    complete_scene,
    load_vocab,
    parse_caption,
    render,
    sample_caption,
    sample_scene,
)
from locoedit.toyworld.world import describe_scene, is_held_out


def test_vocabulary_covers_the_issue():
    v = load_vocab()
    assert set(v.colors) >= {"red", "green", "blue", "yellow"}
    assert set(v.backgrounds) >= {"white", "black", "gray"}
    assert set(v.shapes) >= {"circle", "square", "triangle", "cross"}
    assert set(v.textures) >= {"plain", "striped", "dotted"}
    assert len(v.styles) >= 2 and all("treatment" in s for s in v.styles.values())
    assert v.facts["the sun"] == {"color": "yellow", "shape": "circle", "texture": "plain"}
    # Colors and backgrounds never share a word, so "black" alone is unambiguous.
    assert not set(v.colors) & set(v.backgrounds)


def test_parse_caption_examples():
    assert parse_caption("a red striped circle on black") == {
        "color": "red",
        "texture": "striped",
        "shape": "circle",
        "background": "black",
    }
    assert parse_caption("a circle on black") == {"shape": "circle", "background": "black"}
    assert parse_caption("A Blue Square, in the style of kandinsky.") == {
        "color": "blue",
        "shape": "square",
        "style": "kandinsky",
    }
    assert parse_caption("the sun on gray") == {
        "fact": "the sun",
        "background": "gray",
        "color": "yellow",
        "shape": "circle",
        "texture": "plain",
    }
    assert parse_caption("the sun on gray", expand_facts=False) == {"fact": "the sun", "background": "gray"}
    assert parse_caption("") == {}
    assert parse_caption("an yellow shape") == {"color": "yellow"}


@pytest.mark.parametrize(
    "caption, fragment",
    [
        ("a purple circle on black", "'purple'"),
        ("a red circle on red", "background"),
        ("a red circle in the style of monet", "artist"),
        ("a red blue circle", "twice"),
        ("a red the sun", "fixes"),
    ],
)
def test_bad_captions_raise_clear_errors(caption, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_caption(caption)


def test_unknown_word_error_lists_the_vocabulary():
    with pytest.raises(ValueError) as err:
        parse_caption("a red hexagon")
    msg = str(err.value)
    assert "'hexagon'" in msg
    for word in ("red", "circle", "striped", "white", "kandinsky", "the sun"):
        assert word in msg


def test_caption_roundtrip_and_distribution():
    rng = np.random.default_rng(0)
    captions = [sample_caption(rng) for _ in range(4000)]
    empty = sum(c == "" for c in captions) / len(captions)
    assert 0.08 < empty < 0.12
    for c in captions:
        attrs = parse_caption(c, expand_facts=False)
        assert caption_for(attrs) == c or c == ""
        assert not is_held_out(attrs)  # a fact caption ("the flag on white") is not the combination
    # Partial captions are in the distribution, and so are facts and styles.
    assert "a circle on black" in captions or any(c.startswith("a circle") for c in captions)
    assert any(c.startswith("the sun") for c in captions)
    assert any("in the style of" in c for c in captions)


def test_held_out_combinations_are_never_captioned_in_full():
    v = load_vocab()
    rng = np.random.default_rng(1)
    held = set(v.held_out)
    for _ in range(3000):
        scene = sample_scene(rng)
        stated = describe_scene(scene, rng)
        if stated:
            assert caption_for({k: s for k, s in stated.items() if k != "style"}) not in held


def test_render_is_deterministic_per_seed():
    a = render({"color": "red", "shape": "circle"}, seed=3)
    b = render({"color": "red", "shape": "circle"}, seed=3)
    c = render({"color": "red", "shape": "circle"}, seed=4)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.array_equal(render("a red circle", seed=3), a)


def test_render_draws_the_stated_colors():
    img = render(
        {"color": "red", "shape": "square", "texture": "plain", "background": "white", "style": "none"}, seed=0
    ).astype(int)
    assert tuple(img[0, 0]) == (255, 255, 255)
    assert tuple(img[16, 16]) == tuple(load_vocab().colors["red"])
    framed = render({"background": "black", "style": "kandinsky"}, seed=0)
    assert tuple(framed[0, 16]) == tuple(load_vocab().styles["kandinsky"]["rgb"])


def test_complete_scene_fills_every_attribute():
    scene = complete_scene({"fact": "the ocean"}, np.random.default_rng(0))
    assert set(ATTRIBUTES) <= set(scene)
    assert (scene["color"], scene["shape"], scene["texture"]) == ("blue", "square", "striped")
    with pytest.raises(ValueError, match="unknown color"):
        complete_scene({"color": "purple"}, np.random.default_rng(0))
