"""The toy world: a procedural renderer of 32x32 pictures with captions, and its vocabulary.

Every picture is one *object* (a shape) of one color and texture on a plain background, optionally
rendered in the *style* of a named artist (a fixed rendering treatment). *Facts* are named entities
bound to a fixed look ("the sun" is always a plain yellow circle). All of it is data in
``vocab.json``; this module only reads it.

A *scene* is a complete assignment ``{attribute: value}`` over :data:`ATTRIBUTES` (style ``"none"``
when there is none, fact ``"none"`` when the picture is not a fact). A *caption* may leave any
attribute out; :func:`parse_caption` returns only the attributes a caption states.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VOCAB_PATH = Path(__file__).with_name("vocab.json")

#: Attributes of a scene, in the order the probe reads them.
ATTRIBUTES: tuple[str, ...] = ("color", "background", "shape", "texture", "style")
NO_STYLE = "none"
NO_FACT = "none"
_FILLERS = ("a", "an")
_SUPERSAMPLE = 2


@dataclass(frozen=True)
class Vocab:
    """The toy world's vocabulary, read from ``vocab.json``."""

    image_size: int
    colors: dict[str, tuple[int, int, int]]
    backgrounds: dict[str, tuple[int, int, int]]
    shapes: tuple[str, ...]
    textures: tuple[str, ...]
    styles: dict[str, dict]
    facts: dict[str, dict[str, str]]
    object_noun: str
    sampling: dict
    held_out: tuple[str, ...]

    def values(self, attribute: str) -> tuple[str, ...]:
        """All values of one attribute (style includes ``"none"``)."""
        if attribute == "color":
            return tuple(self.colors)
        if attribute == "background":
            return tuple(self.backgrounds)
        if attribute == "shape":
            return self.shapes
        if attribute == "texture":
            return self.textures
        if attribute == "style":
            return (NO_STYLE, *self.styles)
        if attribute == "fact":
            return (NO_FACT, *self.facts)
        raise ValueError(f"unknown attribute {attribute!r}; expected one of {(*ATTRIBUTES, 'fact')}")

    def words(self) -> list[str]:
        """Every word a caption may contain (for the tokenizer and error messages)."""
        words = set(_FILLERS) | {"on", "in", "the", "style", "of", self.object_noun}
        words |= set(self.colors) | set(self.backgrounds) | set(self.shapes) | set(self.textures)
        words |= set(self.styles)
        for fact in self.facts:
            words |= set(fact.split())
        return sorted(words)

    def describe(self) -> str:
        """A one-paragraph listing of the vocabulary, for error messages."""
        return (
            f"colors: {', '.join(self.colors)}; backgrounds: {', '.join(self.backgrounds)} (as 'on X'); "
            f"shapes: {', '.join(self.shapes)} (or '{self.object_noun}'); textures: {', '.join(self.textures)}; "
            f"styles: {', '.join(self.styles)} (as 'in the style of X'); facts: {', '.join(self.facts)}"
        )


@functools.lru_cache(maxsize=1)
def load_vocab(path: str | None = None) -> Vocab:
    """Read the vocabulary (cached)."""
    raw = json.loads(Path(path or VOCAB_PATH).read_text())
    return Vocab(
        image_size=int(raw["image_size"]),
        colors={k: tuple(v) for k, v in raw["colors"].items()},
        backgrounds={k: tuple(v) for k, v in raw["backgrounds"].items()},
        shapes=tuple(raw["shapes"]),
        textures=tuple(raw["textures"]),
        styles=dict(raw["styles"]),
        facts=dict(raw["facts"]),
        object_noun=raw["object_noun"],
        sampling=dict(raw["sampling"]),
        held_out=tuple(raw["held_out"]["captions"]),
    )


# ----------------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------------


def _word_after(text: str, words: list[str], i: int, phrase: str, what: str, kinds: str, known) -> str:
    """``words[i]``, which must be one of ``known`` since it follows ``phrase`` in caption ``text``."""
    if i >= len(words) or words[i] not in known:
        got = words[i] if i < len(words) else "<end of caption>"
        raise ValueError(
            f"caption {text!r}: {phrase!r} must be followed by {what}, got {got!r}; known {kinds}: {', '.join(known)}"
        )
    return words[i]


def parse_caption(text: str, expand_facts: bool = True) -> dict[str, str]:
    """Read the attributes a caption states, e.g. ``"a red striped circle on black"`` ->
    ``{"color": "red", "texture": "striped", "shape": "circle", "background": "black"}``.

    A fact ("the sun on gray") gives ``{"fact": "the sun", "background": "gray"}`` plus, when
    ``expand_facts``, the fact's fixed look (color, shape, texture). Style is ``{"style": NAME}``.
    An empty caption gives ``{}``.

    Raises:
        ValueError: for a word outside the vocabulary (the message names it and lists the
            vocabulary), an attribute stated twice, or a fact combined with color/shape/texture.
    """
    vocab = load_vocab()
    words = re.sub(r"[,.!?;:]", " ", text.lower()).split()
    found: dict[str, str] = {}

    def put(attribute: str, value: str) -> None:
        if attribute in found:
            raise ValueError(f"caption {text!r} states the {attribute} twice ({found[attribute]!r} and {value!r})")
        found[attribute] = value

    fact_words = {tuple(f.split()): f for f in vocab.facts}
    i = 0
    while i < len(words):
        w = words[i]
        fact = next((f for fw, f in fact_words.items() if tuple(words[i : i + len(fw)]) == fw), None)
        if fact is not None:
            put("fact", fact)
            i += len(fact.split())
        elif words[i : i + 4] == ["in", "the", "style", "of"]:
            put("style", _word_after(text, words, i + 4, "in the style of", "an artist", "artists", vocab.styles))
            i += 5
        elif w == "on":
            put("background", _word_after(text, words, i + 1, "on", "a background", "backgrounds", vocab.backgrounds))
            i += 2
        elif w in vocab.colors:
            put("color", w)
            i += 1
        elif w in vocab.backgrounds:
            put("background", w)
            i += 1
        elif w in vocab.shapes:
            put("shape", w)
            i += 1
        elif w in vocab.textures:
            put("texture", w)
            i += 1
        elif w in _FILLERS or w == vocab.object_noun:
            i += 1
        else:
            raise ValueError(f"unknown word {w!r} in caption {text!r}; the toy world knows only {vocab.describe()}")
    if "fact" in found:
        clash = [a for a in ("color", "shape", "texture") if a in found]
        if clash:
            raise ValueError(
                f"caption {text!r}: the fact {found['fact']!r} fixes its own {', '.join(clash)}; "
                "state either the fact or the attributes"
            )
        if expand_facts:
            found.update(vocab.facts[found["fact"]])
    return found


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def caption_for(attrs: dict[str, str]) -> str:
    """Write the caption that states exactly ``attrs`` (a partial or full scene).

    Style ``"none"`` and fact ``"none"`` are not written. With a fact, color/shape/texture are not
    written (the fact implies them).
    """
    vocab = load_vocab()
    fact = attrs.get("fact", NO_FACT)
    if fact != NO_FACT:
        head = fact
    else:
        words = [attrs[a] for a in ("color", "texture") if a in attrs]
        words.append(attrs.get("shape", vocab.object_noun))
        head = f"{_article(words[0])} {' '.join(words)}"
    parts = [head]
    if "background" in attrs:
        parts.append(f"on {attrs['background']}")
    if attrs.get("style", NO_STYLE) != NO_STYLE:
        parts.append(f"in the style of {attrs['style']}")
    return " ".join(parts)


def sample_scene(rng: np.random.Generator) -> dict[str, str]:
    """A complete random scene; a fraction ``p_fact_scene`` are facts (their fixed look)."""
    vocab = load_vocab()
    s = vocab.sampling
    scene = {a: str(rng.choice(vocab.values(a))) for a in ATTRIBUTES if a != "style"}
    scene["style"] = str(rng.choice(tuple(vocab.styles))) if rng.random() < s["p_style"] else NO_STYLE
    scene["fact"] = NO_FACT
    if rng.random() < s["p_fact_scene"]:
        fact = str(rng.choice(tuple(vocab.facts)))
        scene.update(vocab.facts[fact])
        scene["fact"] = fact
    return scene


_COMBO = ("color", "texture", "shape", "background")


@functools.lru_cache(maxsize=1)
def held_out_combos() -> frozenset[tuple[str, str, str, str]]:
    """(color, texture, shape, background) combinations never captioned in full in training."""
    combos: set[tuple[str, str, str, str]] = set()
    for caption in load_vocab().held_out:
        attrs = parse_caption(caption)
        color, texture, shape, background = (attrs[a] for a in _COMBO)
        combos.add((color, texture, shape, background))
    return frozenset(combos)


def is_held_out(stated: dict[str, str]) -> bool:
    """Whether a caption's attributes state a held-out combination in full."""
    if not all(a in stated for a in _COMBO):
        return False
    return tuple(stated[a] for a in _COMBO) in held_out_combos()


def describe_scene(scene: dict[str, str], rng: np.random.Generator) -> dict[str, str]:
    """The attributes one random caption of ``scene`` states (some left out, some empty).

    Never states a held-out combination in full (see ``vocab.json``): one of its attributes is
    then left out.
    """
    vocab = load_vocab()
    s = vocab.sampling
    if rng.random() < s["p_empty"]:
        return {}
    keep = s["p_keep"]
    stated = {a: scene[a] for a in ATTRIBUTES if rng.random() < keep[a]}
    if is_held_out(stated):
        del stated[_COMBO[int(rng.integers(len(_COMBO)))]]
    if stated.get("style") == NO_STYLE:
        del stated["style"]
    if scene.get("fact", NO_FACT) != NO_FACT and rng.random() < s["p_fact_caption"]:
        stated = {a: v for a, v in stated.items() if a in ("background", "style")}
        stated["fact"] = scene["fact"]
    return stated


def sample_caption(rng: np.random.Generator) -> str:
    """A random caption from the training distribution (10% are empty)."""
    stated = describe_scene(sample_scene(rng), rng)
    return caption_for(stated) if stated else ""


def complete_scene(attrs: dict[str, str], rng: np.random.Generator) -> dict[str, str]:
    """Fill the attributes a caption leaves out at random (a fact fills its fixed look)."""
    vocab = load_vocab()
    for a, v in attrs.items():
        if a != "fact" and v not in vocab.values(a):
            raise ValueError(f"unknown {a} {v!r}; known: {', '.join(vocab.values(a))}")
    scene = dict(attrs)
    fact = scene.get("fact", NO_FACT)
    if fact != NO_FACT:
        if fact not in vocab.facts:
            raise ValueError(f"unknown fact {fact!r}; known: {', '.join(vocab.facts)}")
        scene.update(vocab.facts[fact])
    scene.setdefault("fact", NO_FACT)
    for a in ATTRIBUTES:
        if a not in scene:
            scene[a] = NO_STYLE if a == "style" else str(rng.choice(vocab.values(a)))
    return scene


# ----------------------------------------------------------------------------------------------
# Renderer
# ----------------------------------------------------------------------------------------------


def _shape_mask(shape: str, x: np.ndarray, y: np.ndarray, cx: float, cy: float, s: float) -> np.ndarray:
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx * dx + dy * dy <= s * s
    if shape == "square":
        h = 0.85 * s
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "triangle":
        top, bottom = -s, 0.85 * s
        frac = (dy - top) / (bottom - top)
        return (dy >= top) & (dy <= bottom) & (np.abs(dx) <= frac * 1.05 * s)
    if shape == "cross":
        w = 0.36 * s
        return ((np.abs(dx) <= w) & (np.abs(dy) <= s)) | ((np.abs(dy) <= w) & (np.abs(dx) <= s))
    raise ValueError(f"unknown shape {shape!r}")


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    h, w = mask.shape
    for oy in range(-r, r + 1):
        for ox in range(-r, r + 1):
            if ox * ox + oy * oy > r * r:
                continue
            shifted = np.zeros_like(mask)
            ys, yd = (slice(max(0, -oy), h - max(0, oy)), slice(max(0, oy), h - max(0, -oy)))
            xs, xd = (slice(max(0, -ox), w - max(0, ox)), slice(max(0, ox), w - max(0, -ox)))
            shifted[yd, xd] = mask[ys, xs]
            out |= shifted
    return out


def render_scene(scene: dict[str, str], rng: np.random.Generator) -> np.ndarray:
    """Draw a complete scene; ``rng`` draws only the geometry (position and size).

    Returns:
        uint8 array [H, W, 3].
    """
    vocab = load_vocab()
    n = vocab.image_size
    k = _SUPERSAMPLE
    big = n * k
    cx = n / 2 + rng.uniform(-2.0, 2.0)
    cy = n / 2 + rng.uniform(-2.0, 2.0)
    size = rng.uniform(9.0, 11.5)
    # Pixel centres of the supersampled grid, in units of output pixels.
    coords = (np.arange(big) + 0.5) / k
    x, y = np.meshgrid(coords, coords)  # [big, big] each
    img = np.empty((big, big, 3), dtype=np.float32)
    img[:] = vocab.backgrounds[scene["background"]]
    mask = _shape_mask(scene["shape"], x, y, cx, cy, size)
    color = np.asarray(vocab.colors[scene["color"]], dtype=np.float32)
    dark = 0.35 * color
    texture = scene["texture"]
    if texture == "plain":
        pattern = np.zeros_like(mask)
    elif texture == "striped":
        pattern = (np.floor(y) // 3) % 2 == 1
    elif texture == "dotted":
        pattern = ((np.floor(x) % 6) < 3) & ((np.floor(y) % 6) < 3)
    else:
        raise ValueError(f"unknown texture {texture!r}")
    img[mask & ~pattern] = color
    img[mask & pattern] = dark
    style = scene["style"]
    if style != NO_STYLE:
        spec = vocab.styles[style]
        rgb = np.asarray(spec["rgb"], dtype=np.float32)
        treatment = spec["treatment"]
        if treatment == "frame":
            border = (x < 2) | (x > n - 2) | (y < 2) | (y > n - 2)
            img[border] = rgb
        elif treatment == "outline":
            img[_dilate(mask, 2 * k) & ~mask] = rgb
        elif treatment == "corners":
            c = 8.5
            corners = (x + y < c) | ((n - x) + y < c) | (x + (n - y) < c) | ((n - x) + (n - y) < c)
            img[corners] = rgb
        else:
            raise ValueError(f"unknown style treatment {treatment!r} for {style!r} in vocab.json")
    small = img.reshape(n, k, n, k, 3).mean(axis=(1, 3))
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def render(attrs: dict[str, str] | str, seed: int) -> np.ndarray:
    """Render a (partial) scene or a caption deterministically from ``seed``.

    Attributes left out are drawn from ``seed`` too, so the same ``(attrs, seed)`` always gives the
    same picture.

    Returns:
        uint8 array [32, 32, 3].
    """
    if isinstance(attrs, str):
        attrs = parse_caption(attrs, expand_facts=False)
    rng = np.random.default_rng(seed)
    return render_scene(complete_scene(attrs, rng), rng)


def render_batch(scenes: list[dict[str, str]], rng: np.random.Generator) -> np.ndarray:
    """Render complete scenes. Returns uint8 [N, H, W, 3]."""
    return np.stack([render_scene(s, rng) for s in scenes])
