"""What every model family provides: its cross-attention layers, prompt encoding and denoising loop."""

from __future__ import annotations

import math
import re
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field, replace
from functools import cached_property

import torch

from locoedit.core.errors import LocoeditError
from locoedit.core.formats import JsonRecord
from locoedit.models.layers import CrossAttentionLayer, list_cross_attention_layers


@dataclass(frozen=True)
class TextConditioning:
    """A batch of encoded prompts, in the form the pipeline's ``prompt_embeds`` arguments take."""

    embeds: torch.Tensor  # [batch, tokens, dim]
    mask: torch.Tensor | None = None  # [batch, tokens], PixArt's text attention mask
    pooled: torch.Tensor | None = None  # [batch, dim], SD-XL's pooled text embedding

    def take(self, rows: list[int]) -> TextConditioning:
        index = torch.tensor(rows, dtype=torch.long, device=self.embeds.device)
        pick = lambda t: None if t is None else t.index_select(0, index)
        return TextConditioning(self.embeds.index_select(0, index), pick(self.mask), pick(self.pooled))

    def where(self, rows: torch.Tensor, other: TextConditioning) -> TextConditioning:
        """This conditioning, with ``other``'s pooled embedding in the selected rows ([batch] bool)."""
        if self.pooled is None:
            return self
        assert other.pooled is not None  # both sides come from one pipeline's encoder, which pools for both
        rows = rows.to(self.pooled.device)[:, None]
        return replace(self, pooled=torch.where(rows, other.pooled, self.pooled))


@dataclass(frozen=True)
class EncodedPrompts:
    conditional: TextConditioning
    unconditional: TextConditioning  # the empty prompt, as the pipeline itself would encode it

    def take(self, rows: list[int]) -> EncodedPrompts:
        return EncodedPrompts(self.conditional.take(rows), self.unconditional.take(rows))


@dataclass(frozen=True)
class PromptTokens:
    """One prompt as the pipeline's tokenizer splits it. Position ``i`` is row ``i`` of the encoded states;
    positions from ``length`` on are padding."""

    text: str  # the prompt after the pipeline's own preprocessing (IF and PixArt lowercase it)
    ids: tuple[int, ...]  # [length] token ids, special tokens included
    offsets: tuple[tuple[int, int], ...]  # [length] character span of each token in ``text``
    special: tuple[bool, ...]  # [length] start- and end-of-sequence tokens
    rows: int  # rows of the encoded states: the tokenizer's padded length, which the denoiser attends to

    @property
    def length(self) -> int:
        return len(self.ids)

    @property
    def eos(self) -> int:
        """Position of the end-of-sequence token (the last real token)."""
        return self.length - 1

    def positions_of(self, start: int, end: int) -> list[int]:
        """The non-special token positions whose characters overlap ``text[start:end]``."""
        return [
            i
            for i, ((a, b), special) in enumerate(zip(self.offsets, self.special))
            if not special and a < end and b > start
        ]

    def phrase_positions(self, phrase: str, near: int = 0) -> list[int]:
        """The token positions of ``phrase`` (its occurrence nearest to character ``near``); a LocoeditError naming
        the prompt when the phrase is not among the tokens the encoder keeps."""
        start = find_phrase(self.text, phrase, near)
        positions = [] if start is None else self.positions_of(start, start + len(phrase.strip()))
        if not positions:
            raise LocoeditError(
                f"{phrase!r} is not among the tokens of prompt {self.text!r} (the encoder keeps {self.length} tokens, "
                "specials included); shorten the prompt or put the concept earlier"
            )
        return positions


def find_phrase(text: str, phrase: str, near: int = 0) -> int | None:
    """Start of the occurrence of ``phrase`` in ``text`` (case-insensitive, whole words) nearest to ``near``."""
    pattern = r"(?<!\w)" + re.escape(phrase.strip().lower()) + r"(?!\w)"
    starts = [m.start() for m in re.finditer(pattern, text.lower())]
    return min(starts, key=lambda s: abs(s - near)) if starts else None


MAX_SIDE = 8192  # pixels; beyond this a request is a typo, not a picture
MAX_STEPS = 10_000


@dataclass(frozen=True)
class GenerationSettings:
    num_inference_steps: int
    guidance_scale: float
    height: int
    width: int

    def __post_init__(self):
        for name, limit in (("num_inference_steps", MAX_STEPS), ("height", MAX_SIDE), ("width", MAX_SIDE)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
                raise LocoeditError(f"{name} must be an integer from 1 to {limit}, got {value!r}")
        guidance = self.guidance_scale
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 0 <= guidance < math.inf:
            raise LocoeditError(f"guidance_scale must be a finite number >= 0, got {guidance!r} (--guidance)")

    def to_json(self) -> dict:
        return {
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "height": self.height,
            "width": self.width,
        }


@dataclass(frozen=True)
class EditDefaults:
    """How edits of a model's concepts are best made, as its folder recommends."""

    token: str | None = None  # which token rows an edit reads (locoedit.edit.request.TOKEN_CHOICES)
    templates: dict[str, list[str]] = field(default_factory=dict)  # per kind or neighbour group, in its vocabulary
    neighbours: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # kind -> group -> concepts to keep
    corpus: str | None = None  # general preservation corpus: a file in the model folder, one prompt per line
    # concept -> prompts entangled with it that do not name it (a fact's look said in words, the facts that carry an
    # attribute): candidates an edit's entanglement mining always scores (locoedit.edit.entangled)
    lookalikes: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSettings(JsonRecord):
    """What a model folder recommends in its ``locoedit.json``: how to sample it, which scorer reads its concepts
    (the toy world: its probe), and how to edit them. Missing entries fall back to locoedit's defaults."""

    FORMAT = "locoedit.model/1"

    generation: GenerationSettings | None = None
    scorer: str | None = None
    edit: EditDefaults | None = None


StepCallback = Callable[[], None]


class Intervention(ABC):
    """A change to how an adapter's model computes, for the span of one generation or of a ``with`` block.

    - ``prepare`` may rewrite the encoded prompts handed to the pipeline (text that reaches the denoiser outside
      the modules an intervention hooks); by default it returns them unchanged;
    - ``installed`` is a context manager that installs the change on entry and restores the model on exit, also
      when generation raises;
    - ``verify`` runs after a generation that finished and raises if the change never took effect (for instance
      because something replaced its attention processors mid-run).
    """

    def prepare(self, adapter: Adapter, prompts: EncodedPrompts) -> EncodedPrompts:
        return prompts

    @abstractmethod
    def installed(self, adapter: Adapter) -> AbstractContextManager[None]: ...

    def verify(self) -> None:
        return None


class Adapter(ABC):
    """One model family. Shared code talks to a pipeline only through this interface."""

    pipeline_class_name: str
    denoiser_name: str = "unet"
    default_steps: int = 50
    default_guidance: float = 7.5
    # The tokenizer whose rows the denoiser attends to (FLUX: T5's, ``tokenizer_2``; its CLIP is pooled only).
    row_tokenizer_name: str = "tokenizer"
    # Joint attention: whether the text rows precede the image rows in the joint sequence (FLUX) or follow them (SD3).
    joint_text_first: bool = False

    def __init__(self, pipe, recommended: ModelSettings | None = None):
        self.pipe = pipe
        self.recommended = recommended or ModelSettings()  # the model folder's own locoedit.json, if any
        pipe.set_progress_bar_config(disable=True)

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, self.denoiser_name)

    @property
    def text_encoder_names(self) -> list[str]:
        """The pipeline's text encoders, by component name (SD-XL has two)."""
        return [name for name in ("text_encoder", "text_encoder_2") if getattr(self.pipe, name, None) is not None]

    @cached_property
    def layers(self) -> list[CrossAttentionLayer]:
        return list_cross_attention_layers(self.denoiser)

    @property
    def device(self) -> torch.device:
        return typing.cast(torch.device, self.denoiser.device)  # diffusers' ModelMixin property

    @property
    def dtype(self) -> torch.dtype:
        return typing.cast(torch.dtype, self.denoiser.dtype)  # diffusers' ModelMixin property

    def default_settings(self) -> GenerationSettings:
        if self.recommended.generation is not None:
            return self.recommended.generation
        side = self.default_image_size()
        return GenerationSettings(self.default_steps, self.default_guidance, side, side)

    # Image sides must be multiples of this (diffusers' pipelines check multiples of 8; PixArt also its patches).
    @property
    def size_multiple(self) -> int:
        return 8

    def settings(
        self,
        steps: int | None = None,
        guidance: float | None = None,
        height: int | None = None,
        width: int | None = None,
    ) -> GenerationSettings:
        """The model's default settings with whatever the caller set (None = the default); checked against the model
        before any work is done."""
        defaults = self.default_settings()
        settings = GenerationSettings(
            defaults.num_inference_steps if steps is None else steps,
            defaults.guidance_scale if guidance is None else guidance,
            defaults.height if height is None else height,
            defaults.width if width is None else width,
        )
        for side in (settings.height, settings.width):
            if side % self.size_multiple:
                raise LocoeditError(
                    f"image size {side} is not a multiple of {self.size_multiple}, which this model needs; "
                    f"e.g. --size {max(self.size_multiple, side // self.size_multiple * self.size_multiple)}"
                )
        return settings

    @abstractmethod
    def default_image_size(self) -> int: ...

    def encode(self, prompts: list[str]) -> EncodedPrompts:
        """The prompts encoded as the pipeline encodes them; refuses a prompt its text encoder would cut short."""
        for prompt in prompts:
            self.check_length(prompt)
        return self._encode(prompts)

    @abstractmethod
    def _encode(self, prompts: list[str]) -> EncodedPrompts: ...

    def check_length(self, prompt: str) -> None:
        """A LocoeditError naming the limit when ``prompt`` has more tokens than the text encoder reads: the pipeline
        would silently drop the rest, and a concept there with it."""
        tokenizer = getattr(self.pipe, self.row_tokenizer_name)
        limit = self.text_max_length or tokenizer.model_max_length
        count = len(tokenizer(self.preprocess_text(prompt), add_special_tokens=True, truncation=False)["input_ids"])
        if count > limit:
            raise LocoeditError(
                f"prompt {prompt!r} has {count} tokens but the text encoder reads at most {limit} (start and end "
                "tokens included); shorten it, or the words past the limit would be silently dropped"
            )

    # Tokens a prompt is padded or truncated to by ``encode``; None = the tokenizer's ``model_max_length``.
    text_max_length: int | None = None

    def preprocess_text(self, prompt: str) -> str:
        """The prompt as the pipeline hands it to its tokenizer."""
        return prompt

    def tokenize(self, prompt: str) -> PromptTokens:
        """Split ``prompt`` exactly as ``encode`` does, with each token's characters (for finding a concept)."""
        tokenizer = getattr(self.pipe, self.row_tokenizer_name)
        text = self.preprocess_text(prompt)
        encoded = tokenizer(
            text,
            max_length=self.text_max_length or tokenizer.model_max_length,
            truncation=True,
            add_special_tokens=True,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
        return PromptTokens(
            text,
            tuple(encoded["input_ids"]),
            tuple(tuple(span) for span in encoded["offset_mapping"]),
            tuple(bool(flag) for flag in encoded["special_tokens_mask"]),
            self.text_max_length or tokenizer.model_max_length,
        )

    @property
    def joint_attention(self) -> bool:
        """Whether the denoiser reads the text through joint attention (SD3, FLUX): its layer table says so."""
        return any(layer.stream != "cross" for layer in self.layers)

    def attention_states(self, cond: TextConditioning) -> torch.Tensor:  # [batch, tokens, dim]
        """The text states as the cross-attention layers receive them (after any projection in the denoiser)."""
        if self.joint_attention:
            raise LocoeditError(
                "joint-attention blocks read the denoiser's own text stream, which depends on the block and the "
                "timestep, not one set of text states; capture it while generating (locoedit.edit.rows.encode_rows)"
            )
        return cond.embeds

    def route_added_text(
        self, rows: torch.Tensor, original: TextConditioning, target: TextConditioning
    ) -> tuple[TextConditioning, AbstractContextManager[None]]:
        """Where text reaches the denoiser outside cross-attention, give the selected rows ([batch] bool) the target's
        text. Returns the conditioning to hand the pipeline and a context to run it in. Default: no such path."""
        return original, nullcontext()

    def running(self, prompts: EncodedPrompts) -> AbstractContextManager[None]:
        """The adapter's own attention processors for one generation of ``prompts``, installed beneath every
        intervention and restored after it. Default: none (diffusers' own processors)."""
        return nullcontext()

    # Pipelines that still take diffusers' older per-step ``callback(step, timestep, latents)`` (IF, PixArt).
    legacy_step_callback: bool = False

    @abstractmethod
    def pipeline_inputs(self, prompts: EncodedPrompts) -> dict:
        """The pipeline's keyword arguments that carry these encoded prompts (and its other family options)."""

    def postprocess(self, images: torch.Tensor) -> torch.Tensor:  # [batch, 3, H, W] as output_type="pt" gives them
        return images

    def _run_pipeline(
        self,
        prompts: EncodedPrompts,
        generators: list[torch.Generator],
        settings: GenerationSettings,
        on_step: StepCallback | None,
    ) -> torch.Tensor:  # [batch, 3, H, W] in [0, 1], any device and dtype
        step: dict[str, Callable[..., object]] = {}
        if on_step is not None and self.legacy_step_callback:
            step = {"callback": lambda index, timestep, latents: on_step()}
        elif on_step is not None:

            def step_end(pipe, index, timestep, tensors):
                on_step()
                return tensors  # the pipeline continues with what the callback returns

            step = {"callback_on_step_end": step_end}
        images = self.pipe(
            **self.pipeline_inputs(prompts), generator=generators, output_type="pt", **step, **settings.to_json()
        ).images
        return self.postprocess(images)

    def generate(
        self,
        prompts: EncodedPrompts,
        seeds: list[int],
        settings: GenerationSettings,
        interventions: Sequence[Intervention] = (),
        on_step: StepCallback | None = None,
    ) -> torch.Tensor:  # [batch, 3, H, W] float32 on CPU, in [0, 1]
        """Generate one image per row of ``prompts``; row ``b`` starts from noise seeded by ``seeds[b]`` alone.

        Each intervention is prepared, installed for the whole denoising loop (restored even if it raises) and
        verified after it.
        """
        batch = prompts.conditional.embeds.shape[0]
        if len(seeds) != batch:
            raise ValueError(f"got {len(seeds)} seeds for {batch} prompts; give one seed per prompt row")
        # One CPU generator per row: a row's noise then depends on its seed only, not on its batch neighbours.
        generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
        with torch.no_grad():
            for intervention in interventions:
                prompts = intervention.prepare(self, prompts)
            with ExitStack() as stack:
                stack.enter_context(self.running(prompts))
                for intervention in interventions:
                    stack.enter_context(intervention.installed(self))
                images = self._run_pipeline(prompts, generators, settings, on_step)
        for intervention in interventions:
            intervention.verify()
        return images.float().cpu().clamp(0, 1)


class PooledTextAdapter(Adapter):
    """Families whose pipelines also take a pooled text embedding (SD-XL, SD3, FLUX): it reaches the denoiser outside
    attention (SD-XL's added time/text condition, the joint models' time embedding, once per row for all layers), so
    routing gives the selected rows the target's pooled embedding; the pipeline gets prompt and pooled embeddings."""

    def route_added_text(self, rows, original, target):
        return original.where(rows, target), nullcontext()

    def pipeline_inputs(self, prompts):
        return {
            "prompt_embeds": prompts.conditional.embeds,
            "negative_prompt_embeds": prompts.unconditional.embeds,
            "pooled_prompt_embeds": prompts.conditional.pooled,
            "negative_pooled_prompt_embeds": prompts.unconditional.pooled,
        }
