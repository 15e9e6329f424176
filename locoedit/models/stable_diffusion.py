"""SD-1.x, SD-2.x and their fine-tunes (OpenJourney): ``StableDiffusionPipeline``."""

from __future__ import annotations

from locoedit.models.base import Adapter, EncodedPrompts, TextConditioning


class StableDiffusionAdapter(Adapter):
    pipeline_class_name = "StableDiffusionPipeline"

    def default_image_size(self) -> int:
        return self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor

    def _encode(self, prompts: list[str]) -> EncodedPrompts:
        cond, uncond = self.pipe.encode_prompt(prompts, self.device, 1, do_classifier_free_guidance=True)
        return EncodedPrompts(TextConditioning(cond), TextConditioning(uncond))

    def pipeline_inputs(self, prompts):
        return {"prompt_embeds": prompts.conditional.embeds, "negative_prompt_embeds": prompts.unconditional.embeds}
