"""FLUX.1: ``FluxPipeline`` (double-stream joint blocks, then single-stream blocks; text rows before image rows).

Text: ``text_max_length`` T5 rows for attention, and CLIP's pooled embedding for the time embedding. FLUX.1-dev is
guidance-distilled: ``guidance_scale`` is an input of the transformer and there is no unconditional pass, so every
batch row is a conditional row.
"""

from __future__ import annotations

from locoedit.models.base import EncodedPrompts, PooledTextAdapter, TextConditioning


class FluxAdapter(PooledTextAdapter):
    pipeline_class_name = "FluxPipeline"
    denoiser_name = "transformer"
    default_steps = 28
    default_guidance = 3.5
    text_max_length = 512  # T5 rows: FluxPipeline.encode_prompt's default max_sequence_length
    row_tokenizer_name = "tokenizer_2"  # the rows the transformer attends to are T5's
    joint_text_first = True

    @property
    def size_multiple(self) -> int:
        return self.pipe.vae_scale_factor * 2  # latents are packed into 2x2 patches

    def default_image_size(self) -> int:
        return self.pipe.default_sample_size * self.pipe.vae_scale_factor

    def _encode_batch(self, prompts: list[str]) -> TextConditioning:
        embeds, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            device=self.device,
            num_images_per_prompt=1,
            max_sequence_length=self.text_max_length,
        )
        return TextConditioning(embeds, pooled=pooled)

    def _encode(self, prompts: list[str]) -> EncodedPrompts:
        # The empty prompt is encoded too, as every adapter's contract asks, though FluxPipeline never runs it.
        return EncodedPrompts(self._encode_batch(prompts), self._encode_batch([""] * len(prompts)))

    def pipeline_inputs(self, prompts):
        return {"prompt_embeds": prompts.conditional.embeds, "pooled_prompt_embeds": prompts.conditional.pooled}
