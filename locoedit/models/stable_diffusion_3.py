"""SD3 / SD3.5: ``StableDiffusion3Pipeline`` (MMDiT: joint attention over image rows, then text rows).

Text: two CLIP encoders (penultimate hidden states side by side, zero-padded to T5's width) followed by
``t5_rows`` T5 rows (zero rows when the pipeline has no T5), and both CLIPs' pooled embeddings, which enter every
block through the time embedding. Every joint block reads the denoiser's own text stream, which each block rewrites.

Without T5 (the toy MMDiT; SD3 loaded with ``text_encoder_3=None``) the T5 rows are identical zero rows, and stay
identical through every block. The adapter then encodes one of them and, while it generates, attends to it with the
weight of all ``t5_rows`` (:class:`~locoedit.toyworld.models.CompactRowsProcessor`): the function the pipeline
computes with its 256 rows, to float round-off, at a fraction of the cost.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from contextlib import contextmanager

from locoedit.core.errors import LocoeditError
from locoedit.models.base import EncodedPrompts, PooledTextAdapter, TextConditioning


class StableDiffusion3Adapter(PooledTextAdapter):
    pipeline_class_name = "StableDiffusion3Pipeline"
    denoiser_name = "transformer"
    default_steps = 28
    default_guidance = 7.0
    # The T5 rows appended after the CLIP rows: the pipeline's own max_sequence_length default.
    t5_rows: int = 256

    @property
    def text_encoder_names(self) -> list[str]:
        names = ("text_encoder", "text_encoder_2", "text_encoder_3")
        return [name for name in names if getattr(self.pipe, name, None) is not None]

    @property
    def size_multiple(self) -> int:
        return self.pipe.vae_scale_factor * self.pipe.patch_size

    def default_image_size(self) -> int:
        return self.pipe.default_sample_size * self.pipe.vae_scale_factor

    def check_length(self, prompt: str) -> None:
        super().check_length(prompt)  # the CLIP rows
        if getattr(self.pipe, "text_encoder_3", None) is None:
            return
        count = len(self.pipe.tokenizer_3(prompt, add_special_tokens=True, truncation=False)["input_ids"])
        if count > self.t5_rows:
            raise LocoeditError(
                f"prompt {prompt!r} has {count} T5 tokens but SD3 reads at most {self.t5_rows} (the end token "
                "included); shorten it, or the words past the limit would be silently dropped from the T5 rows"
            )

    @property
    def _compact_t5_rows(self) -> bool:
        """Whether the T5 rows are zero rows that one weighted row can stand for: no T5, and diffusers' own joint
        attention processor on every joint block (another processor is left alone, and gets all the rows)."""
        from diffusers.models.attention_processor import JointAttnProcessor2_0

        if getattr(self.pipe, "text_encoder_3", None) is not None:
            return False
        return all(type(layer.module.processor) is JointAttnProcessor2_0 for layer in self.layers)

    @contextmanager
    def running(self, prompts: EncodedPrompts) -> Iterator[None]:
        compact = self.pipe.tokenizer_max_length + 1  # CLIP rows and the one zero row standing for all T5 rows
        # Encoded here with the compact row, alone or side by side with a target's (joint routing).
        if not self._compact_t5_rows or prompts.conditional.embeds.shape[1] not in (compact, 2 * compact):
            yield
            return
        from locoedit.toyworld.models import CompactRowsProcessor

        denoiser = typing.cast(typing.Any, self.denoiser)  # a diffusers model: attn_processors, set_attn_processor
        previous = denoiser.attn_processors
        installed = dict(previous)
        for layer in self.layers:
            installed[f"{layer.name}.processor"] = CompactRowsProcessor(self.t5_rows)
        denoiser.set_attn_processor(installed)
        try:
            yield
        finally:
            denoiser.set_attn_processor(previous)

    def _encode(self, prompts: list[str]) -> EncodedPrompts:
        cond, uncond, pooled, uncond_pooled = self.pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=True,
            max_sequence_length=1 if self._compact_t5_rows else self.t5_rows,  # see the module docstring
        )
        return EncodedPrompts(TextConditioning(cond, pooled=pooled), TextConditioning(uncond, pooled=uncond_pooled))
