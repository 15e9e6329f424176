"""Plain generation with any supported model: one image per (prompt, seed), written with a JSON record."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from locoedit.core.dtypes import dtype_named
from locoedit.core.formats import JsonRecord
from locoedit.core.io import write_png
from locoedit.core.progress import ProgressCallback, ProgressTask
from locoedit.core.runfolder import RunFolder, check_writable
from locoedit.models import Adapter, GenerationSettings, Intervention, load_adapter
from locoedit.workflows.requests import GenerationRequest


@dataclass(frozen=True)
class GeneratedImage:
    prompt: str
    seed: int
    path: str  # relative to the output folder


@dataclass(frozen=True)
class GenerationRecord(JsonRecord):
    FORMAT = "locoedit.generation/1"

    request: GenerationRequest
    settings: GenerationSettings
    images: list[GeneratedImage]


def generate_images(
    request: GenerationRequest,
    adapter: Adapter,
    interventions: Sequence[Intervention] = (),
    progress: ProgressCallback | None = None,
) -> torch.Tensor:  # [prompts x seeds, 3, H, W] in [0, 1]
    """One image per (prompt, seed), prompt-major, in memory; ``interventions`` (e.g. a delta at a strength) are
    installed for the generation and removed after, also when it fails."""
    settings = adapter.settings(request.steps, request.guidance, request.size, request.size)
    rows = [(p, seed) for p in range(len(request.prompts)) for seed in request.seeds]
    encoded = adapter.encode(list(request.prompts)).take([p for p, _ in rows])
    task = ProgressTask(progress, "generating", settings.num_inference_steps)
    return adapter.generate(encoded, [seed for _, seed in rows], settings, interventions, task.advance)


def generate_to_folder(
    request: GenerationRequest,
    out: str | Path,
    adapter: Adapter | None = None,
    progress: ProgressCallback | None = None,
) -> GenerationRecord:
    """Generate into ``out``. The same request again finds its images there and does nothing; a folder holding
    another run or anything else is refused."""
    out = check_writable(out)
    record_file = out / "generation.json"
    adapter = adapter or load_adapter(request.model, dtype_named(request.dtype), request.device)
    settings = adapter.settings(request.steps, request.guidance, request.size, request.size)
    if RunFolder(out).claim(request) and record_file.is_file():
        return GenerationRecord.read(record_file)
    images = generate_images(request, adapter, progress=progress)
    rows = [(p, seed) for p in range(len(request.prompts)) for seed in request.seeds]
    records = []
    for (p, seed), image in zip(rows, images):
        path = f"p{p}_s{seed}.png"
        write_png(out / path, image)
        records.append(GeneratedImage(request.prompts[p], seed, path))
    record = GenerationRecord(request, settings, records)
    record.write(record_file)
    return record
