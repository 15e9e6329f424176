"""SD-1.x, SD-2.x and their fine-tunes (OpenJourney): ``StableDiffusionPipeline``."""

from __future__ import annotations


from locoedit.models.base import Adapter, EncodedPrompts, GenerationSettings, StepCallback, TextConditioning


def _step_end(on_step: StepCallback | None):
    if on_step is None:
        return None

    def callback(pipe, step, timestep, tensors):
        on_step()
        return tensors

    return callback


class StableDiffusionAdapter(Adapter):
    pipeline_class_name = "StableDiffusionPipeline"

    def default_image_size(self) -> int:
        return self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor

    def encode(self, prompts: list[str]) -> EncodedPrompts:
        cond, uncond = self.pipe.encode_prompt(prompts, self.device, 1, do_classifier_free_guidance=True)
        return EncodedPrompts(TextConditioning(cond), TextConditioning(uncond))

    def _run_pipeline(self, prompts, generators, settings: GenerationSettings, on_step):
        return self.pipe(
            prompt_embeds=prompts.conditional.embeds,
            negative_prompt_embeds=prompts.unconditional.embeds,
            generator=generators,
            output_type="pt",
            callback_on_step_end=_step_end(on_step),
            **settings.to_json(),
        ).images
