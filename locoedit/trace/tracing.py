"""Causal tracing, the paper's foil: where does restoring one clean state bring a corrupted concept back?

1. Clean run: the prompts as they are; every denoiser site's output is recorded at every step.
2. Corrupted run: the concept's input token embeddings get seeded Gaussian noise (:class:`TokenEmbeddingNoise`).
3. For each site, the corrupted run again, with that site's clean output restored: a denoiser site at every
   denoising step (both halves of classifier-free guidance), a text-encoder site at the concept's last token (or
   all its tokens) while the prompt is encoded.

A site's effect is the share of the clean-minus-corrupted score gap that restoring it closes: 1 = fully restored,
0 = no better than corrupted. Scores are the concept scorer's (``pixel``: minus the distance to the clean image, so
the gap is always defined). Rows are (prompt, seed); each site's effect is the mean over rows of
(restored - corrupted) / gap, with the gap the mean over rows; its spread is their standard deviation.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import torch

from locoedit.core.dtypes import dtype_named
from locoedit.core.errors import LocoeditError
from locoedit.core.io import write_png, write_text
from locoedit.core.progress import ProgressCallback, ProgressTask
from locoedit.core.runfolder import check_writable, remove_stale
from locoedit.core.versions import versions
from locoedit.interventions import ActivationPatch, ActivationRecorder
from locoedit.models import Adapter, EncodedPrompts, load_adapter
from locoedit.scoring import ConceptScorer, PixelScorer, Scorer, resolve_scorer
from locoedit.trace.corruption import TokenEmbeddingNoise
from locoedit.trace.report import trace_report_html
from locoedit.trace.request import TraceRequest
from locoedit.trace.result import MIN_GAP, RESULT_FILE, WEAK_GAP, SiteEffect, TraceImages, TraceResult
from locoedit.trace.sites import Site, denoiser_sites, text_encoder_sites


def _images_of(group: str, request: TraceRequest) -> list[str]:
    return [f"images/{group}/p{p}_s{seed}.png" for p in range(len(request.prompts)) for seed in request.seeds]


class Tracer:
    def __init__(self, request: TraceRequest, adapter: Adapter, scorer: Scorer, progress: ProgressCallback | None):
        self.request, self.adapter, self.scorer, self.progress = request, adapter, scorer, progress
        self.settings = adapter.settings(request.steps, request.guidance, request.height, request.width)
        self.rows = [(p, seed) for p in range(len(request.prompts)) for seed in request.seeds]
        tokens = [adapter.tokenize(prompt) for prompt in request.prompts]
        self.positions = [t.phrase_positions(request.concept) for t in tokens]  # per prompt
        concept_ids = [tuple(t.ids[i] for i in positions) for t, positions in zip(tokens, self.positions)]
        self.noise = TokenEmbeddingNoise(concept_ids, request.noise, request.noise_seed)
        self.timings = {"generation_s": 0.0}
        self.clean_images: torch.Tensor | None = None

    def _encode(self, prompt: int, patches=()) -> EncodedPrompts:
        """Prompt ``prompt`` encoded with its concept corrupted (and the given text-encoder patches installed)."""
        with ExitStack() as stack:
            for intervention in (self.noise, *patches):
                stack.enter_context(intervention.installed(self.adapter))
            encoded = self.adapter.encode([self.request.prompts[prompt]])
        for patch in patches:
            patch.verify()
        return encoded

    def presence(self, images: torch.Tensor) -> torch.Tensor:  # [rows]
        if isinstance(self.scorer, ConceptScorer):
            return self.scorer.score(images, self.request.concept).double()
        assert self.clean_images is not None  # run() generates the clean images before it scores anything
        return -(images.double() - self.clean_images.double()).abs().flatten(1).mean(1)

    def run(self, sites: list[Site]) -> tuple[dict, dict[str, torch.Tensor]]:
        request = self.request
        denoiser = [s for s in sites if s.part == "denoiser"]
        encoder = [s for s in sites if s.part == "text_encoder"]
        chunks = [denoiser[i : i + request.chunk] for i in range(0, len(denoiser), request.chunk)]
        encoder_chunks = [encoder[i : i + request.chunk] for i in range(0, len(encoder), request.chunk)]
        task = ProgressTask(
            self.progress, "tracing", (2 + len(chunks) + len(encoder_chunks)) * self.settings.num_inference_steps
        )
        prompts = range(len(request.prompts))
        clean, encoder_states = [], []  # per prompt: its encoding, and every encoder site's clean outputs
        for p in prompts:
            encoder_states.append(ActivationRecorder([s.name for s in encoder]))
            with encoder_states[-1].installed(self.adapter):
                clean.append(self.adapter.encode([request.prompts[p]]))
        corrupted = [self._encode(p) for p in prompts]
        self.noise.verify()
        recorder = ActivationRecorder([s.name for s in denoiser])
        self.clean_images = self._generate(clean, 1, [recorder] if denoiser else [], task)
        corrupted_images = self._generate(corrupted, 1, [], task)
        scores = {"clean": self.presence(self.clean_images), "corrupted": self.presence(corrupted_images)}
        images = {"clean": self.clean_images, "corrupted": corrupted_images}
        batch = len(self.rows)
        for chunk in chunks:
            patches = [
                ActivationPatch(site.name, recorder.outputs[site.name], _rows(batch, len(chunk), j))
                for j, site in enumerate(chunk)
            ]
            stacked = [_stack([corrupted[p]] * len(chunk)) for p in prompts]
            restored = self._generate(stacked, len(chunk), patches, task)
            self._split(restored, chunk, scores, images)
        for chunk in encoder_chunks:
            conditioned = [
                _stack([self._restore_in_encoder(site, p, encoder_states[p].outputs[site.name]) for site in chunk])
                for p in prompts
            ]
            restored = self._generate(conditioned, len(chunk), [], task)
            self._split(restored, chunk, scores, images)
        return scores, images

    def _generate(self, stacked: list[EncodedPrompts], groups: int, interventions, task) -> torch.Tensor:
        """One image per (group, prompt, seed), in that order: ``stacked[p]`` holds prompt p's conditioning for each of
        the ``groups``, and group j's rows are its block of the batch."""
        encoded = _stack([stacked[p].take([j]) for j in range(groups) for p, _ in self.rows])
        seeds = [seed for _ in range(groups) for _, seed in self.rows]
        start = time.perf_counter()
        images = self.adapter.generate(encoded, seeds, self.settings, interventions, task.advance)
        self.timings["generation_s"] += time.perf_counter() - start
        return images

    def _restore_in_encoder(self, site: Site, prompt: int, clean: list[torch.Tensor]) -> EncodedPrompts:
        """Prompt ``prompt`` encoded corrupted, with ``site``'s ``clean`` outputs written back at the concept."""
        positions = self.positions[prompt] if self.request.restore_tokens == "all" else self.positions[prompt][-1:]
        return self._encode(prompt, [ActivationPatch(site.name, clean, positions=positions)])

    def _split(self, restored: torch.Tensor, chunk: list[Site], scores: dict, images: dict) -> None:
        for site, group in zip(chunk, restored.split(len(self.rows))):
            scores[site.name] = self.presence(group)
            images[site.name] = group


def _stack(parts: list[EncodedPrompts]) -> EncodedPrompts:
    def cat(tensors):
        return None if tensors[0] is None else torch.cat(tensors)

    def join(conditionings):
        return replace(
            conditionings[0],
            embeds=cat([c.embeds for c in conditionings]),
            mask=cat([c.mask for c in conditionings]),
            pooled=cat([c.pooled for c in conditionings]),
        )

    return EncodedPrompts(join([p.conditional for p in parts]), join([p.unconditional for p in parts]))


def _rows(batch: int, groups: int, group: int) -> torch.Tensor:  # [groups * batch] bool: block ``group`` of a half
    rows = torch.zeros(groups, batch, dtype=torch.bool)
    rows[group] = True
    return rows.flatten()


def _effects(scores: dict[str, torch.Tensor], site: Site) -> SiteEffect:
    corrupted, gap = scores["corrupted"], (scores["clean"] - scores["corrupted"]).mean().item()
    if abs(gap) < MIN_GAP:
        return SiteEffect(site.name, site.part, site.kind, site.index, None, None, [])
    effects = (scores[site.name] - corrupted) / gap
    std = effects.std().item() if effects.numel() > 1 else 0.0
    return SiteEffect(site.name, site.part, site.kind, site.index, effects.mean().item(), std, effects.tolist())


def select_sites(adapter: Adapter, request: TraceRequest) -> list[Site]:
    """The sites of the request's parts, in execution order; only the named ones when ``request.sites`` is set."""
    sites = (denoiser_sites(adapter) if "denoiser" in request.parts else []) + (
        text_encoder_sites(adapter) if "text_encoder" in request.parts else []
    )
    if request.sites:
        known = {site.name: site for site in sites}
        unknown = [name for name in request.sites if name not in known]
        if unknown:
            examples = ", ".join(site.name for site in sites[:3])
            raise LocoeditError(
                f"unknown site(s) {', '.join(unknown)}; sites are pipeline paths such as {examples} "
                "(`locoedit sites MODEL` lists them)"
            )
        sites = [known[name] for name in request.sites]
    return sites


def trace(
    request: TraceRequest,
    out: str | Path | None = None,
    adapter: Adapter | None = None,
    scorer: Scorer | None = None,
    progress: ProgressCallback | None = None,
) -> TraceResult:
    """Run causal tracing. With ``out``, write ``trace.json``, the images and ``report.html`` there."""
    if out is not None:
        out = check_writable(out)
        remove_stale(out)
        if out.exists() and any(out.iterdir()):
            raise LocoeditError(f"output {out} exists and is not an empty folder; choose a new --out")
    adapter = adapter or load_adapter(request.model, dtype_named(request.dtype), request.device)
    scorer = resolve_scorer(request.scorer, scorer, adapter)
    request = replace(request, scorer=scorer.spec)  # the result records the scorer used
    if isinstance(scorer, ConceptScorer):
        scorer.check_concept(request.concept)
    elif not isinstance(scorer, PixelScorer):
        raise LocoeditError(f"scorer {scorer.spec!r} cannot score a traced run; use a concept scorer or 'pixel'")
    sites = select_sites(adapter, request)
    started = time.perf_counter()
    tracer = Tracer(request, adapter, scorer, progress)
    scores, images = tracer.run(sites)
    effects = [_effects(scores, site) for site in sites]
    clean, corrupted = scores["clean"].mean().item(), scores["corrupted"].mean().item()
    note = ""
    if abs(clean - corrupted) < MIN_GAP:
        note = "the corruption did not change the score (gap 0), so no site's effect is defined; raise --noise"
    elif clean and abs(clean - corrupted) < WEAK_GAP * abs(clean):
        note = (
            f"the corruption moved the score by only {abs(clean - corrupted) / abs(clean):.1%} of the clean score, "
            "so the effects rest on the few images it changed; raise --noise (e.g. --noise 6)"
        )
    paths = TraceImages(_images_of("clean", request), _images_of("corrupted", request))
    result = TraceResult(
        request.model,
        request,
        tracer.settings,
        request.concept,
        list(request.seeds),
        dict(tracer.noise.sigma),
        clean,
        corrupted,
        clean - corrupted,
        effects,
        paths,
        [layer.info for layer in adapter.layers],
        note,
        versions(),
        {**tracer.timings, "total_s": time.perf_counter() - started},
    )
    for part in ("denoiser", "text_encoder"):
        best = result.best(part)
        if best is not None:
            result.images.restored[best.name] = _images_of(f"restored/{best.name}", request)
    if out is not None:
        for group, group_paths in (
            ("clean", result.images.clean),
            ("corrupted", result.images.corrupted),
            *result.images.restored.items(),
        ):
            for path, image in zip(group_paths, images[group]):
                write_png(out / path, image)
        result.write(out / RESULT_FILE)
        write_text(out / "report.html", trace_report_html(result))
    return result
