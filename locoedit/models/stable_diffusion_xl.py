"""SD-XL: ``StableDiffusionXLPipeline`` (two CLIP text encoders, hidden states concatenated to 2048-d)."""

from __future__ import annotations

from locoedit.models.base import EncodedPrompts, PooledTextAdapter, TextConditioning


class StableDiffusionXLAdapter(PooledTextAdapter):
    pipeline_class_name = "StableDiffusionXLPipeline"
    default_guidance = 5.0

    def default_image_size(self) -> int:
        return self.pipe.default_sample_size * self.pipe.vae_scale_factor

    def _encode(self, prompts: list[str]) -> EncodedPrompts:
        cond, uncond, pooled, uncond_pooled = self.pipe.encode_prompt(
            prompt=prompts, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=True
        )
        return EncodedPrompts(TextConditioning(cond, pooled=pooled), TextConditioning(uncond, pooled=uncond_pooled))
