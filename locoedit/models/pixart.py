"""PixArt-alpha: ``PixArtAlphaPipeline`` (DiT denoiser, T5 text with an attention mask)."""

from __future__ import annotations

import torch

from locoedit.models.base import Adapter, EncodedPrompts, TextConditioning


class PixArtAlphaAdapter(Adapter):
    pipeline_class_name = "PixArtAlphaPipeline"
    denoiser_name = "transformer"
    default_steps = 20
    default_guidance = 4.5
    text_max_length = 120  # PixArtAlphaPipeline.encode_prompt's default max_sequence_length
    legacy_step_callback = True

    def preprocess_text(self, prompt: str) -> str:
        return self.pipe._text_preprocessing(prompt, clean_caption=False)[0]

    @property
    def size_multiple(self) -> int:
        return 8 * self.pipe.transformer.config.patch_size

    def default_image_size(self) -> int:
        return self.pipe.transformer.config.sample_size * self.pipe.vae_scale_factor

    def _encode(self, prompts: list[str]) -> EncodedPrompts:
        cond, cond_mask, uncond, uncond_mask = self.pipe.encode_prompt(
            prompts, do_classifier_free_guidance=True, device=self.device, clean_caption=False
        )
        return EncodedPrompts(TextConditioning(cond, mask=cond_mask), TextConditioning(uncond, mask=uncond_mask))

    def attention_states(self, cond: TextConditioning) -> torch.Tensor:
        return self.pipe.transformer.caption_projection(cond.embeds.to(self.dtype))

    def pipeline_inputs(self, prompts):
        return {
            "prompt_embeds": prompts.conditional.embeds,
            "prompt_attention_mask": prompts.conditional.mask,
            "negative_prompt_embeds": prompts.unconditional.embeds,
            "negative_prompt_attention_mask": prompts.unconditional.mask,
            "negative_prompt": None,
            "clean_caption": False,
            "use_resolution_binning": False,
        }
