"""DeepFloyd IF stage I: ``IFPipeline`` (T5 text, pixel space, text joined to image tokens by added K/V)."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from locoedit.models.base import Adapter, EncodedPrompts, TextConditioning


class DeepFloydIFAdapter(Adapter):
    pipeline_class_name = "IFPipeline"
    default_guidance = 7.0
    text_max_length = 77  # IFPipeline.encode_prompt pads and truncates to 77 T5 tokens
    legacy_step_callback = True

    def preprocess_text(self, prompt: str) -> str:
        return self.pipe._text_preprocessing(prompt, clean_caption=False)[0]

    def default_image_size(self) -> int:
        return self.pipe.unet.config.sample_size

    def _encode(self, prompts: list[str]) -> EncodedPrompts:
        cond, uncond = self.pipe.encode_prompt(
            prompts, do_classifier_free_guidance=True, device=self.device, clean_caption=False
        )
        return EncodedPrompts(TextConditioning(cond), TextConditioning(uncond))

    def attention_states(self, cond: TextConditioning) -> torch.Tensor:
        projection = self.pipe.unet.encoder_hid_proj
        return cond.embeds if projection is None else projection(cond.embeds.to(self.dtype))

    def route_added_text(self, rows, original, target):
        return original, self._route_text_time_embedding(rows, target)

    @contextmanager
    def _route_text_time_embedding(self, rows: torch.Tensor, target: TextConditioning):
        # IF pools the raw T5 states into its time embedding (``unet.add_embedding``), outside cross-attention.
        def swap_rows(module, args):
            (states,) = args
            offset = states.shape[0] - rows.shape[0]
            pick = torch.cat([torch.zeros(offset, dtype=torch.bool), rows]).to(states.device)
            replacement = torch.cat([states[:offset], target.embeds.to(states.device, states.dtype)])
            return (torch.where(pick[:, None, None], replacement, states),)

        handle = self.pipe.unet.add_embedding.register_forward_pre_hook(swap_rows)
        try:
            yield
        finally:
            handle.remove()

    def pipeline_inputs(self, prompts):
        return {
            "prompt_embeds": prompts.conditional.embeds,
            "negative_prompt_embeds": prompts.unconditional.embeds,
            "clean_caption": False,
        }

    def postprocess(self, images):
        return images / 2 + 0.5  # IF returns its raw [-1, 1] samples for output_type="pt"
