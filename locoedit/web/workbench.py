"""What the web app does, without the web: each operation takes the library's request, runs as a job on its model's
queue (:mod:`locoedit.web.jobs`) and works on the model kept in memory, loaded once for all of them."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from locoedit.core.dtypes import dtype_named
from locoedit.core.progress import ProgressCallback
from locoedit.delta.file import EditDelta
from locoedit.edit import EditRequest, edit_to_file
from locoedit.evaluate import EvaluationRequest, EvaluationResult, evaluate_from_request
from locoedit.localize import LocalizationRequest, LocalizationResult, localize
from locoedit.models import Adapter, load_adapter
from locoedit.web.jobs import JobQueue
from locoedit.workflows.generate import generate_images
from locoedit.workflows.requests import GenerationRequest


class Workbench:
    """The one model in memory (the last one asked for: loading another lets it go), its job queue, and the folder
    under which new run folders are suggested."""

    def __init__(self, runs: str | Path):
        self.runs = Path(runs)
        self.queue = JobQueue()
        self._loading = threading.Lock()
        self._loaded: tuple[tuple[str, str, str | None], Adapter] | None = None

    def adapter(self, model: str, dtype: str, device: str | None) -> Adapter:
        """The model, loaded on first use; call it inside a job of that model."""
        key = (model, dtype, device)
        with self._loading:
            if self._loaded is None or self._loaded[0] != key:
                self._loaded = None  # the old model's memory is free before the new one loads
                self._loaded = (key, load_adapter(model, dtype_named(dtype), device))
            return self._loaded[1]

    def fresh_folder(self, kind: str) -> Path:
        """The first ``RUNS/KIND-NNN`` that does not exist yet: where a new run is suggested to go."""
        number = 1
        while (self.runs / f"{kind}-{number:03d}").exists():
            number += 1
        return self.runs / f"{kind}-{number:03d}"

    def localize(
        self, request: LocalizationRequest, out: Path, progress: ProgressCallback | None = None
    ) -> LocalizationResult:
        with self.queue.run(request.model, f"localize {request.concept!r}", progress) as report:
            adapter = self.adapter(request.model, request.dtype, request.device)
            return localize(request, out=out, adapter=adapter, progress=report)

    def edit(self, request: EditRequest, out: Path, progress: ProgressCallback | None = None) -> EditDelta:
        """Compute the edit (the model is not changed) and write its delta file."""
        with self.queue.run(request.model, f"edit {', '.join(request.concepts)!r}", progress) as report:
            adapter = self.adapter(request.model, request.dtype, request.device)
            return edit_to_file(request, out, adapter=adapter, progress=report)

    def generate(
        self,
        request: GenerationRequest,
        delta: EditDelta | None = None,
        strength: float = 1.0,
        progress: ProgressCallback | None = None,
    ) -> torch.Tensor:  # [prompts x seeds, 3, H, W]
        """The request's images; with ``delta``, generated with it applied at ``strength`` and reverted after, also
        when generation fails."""
        interventions = [] if delta is None else [delta.at_strength(strength)]
        title = "generate" if delta is None else f"generate with the edit at strength {strength:g}"
        with self.queue.run(request.model, title, progress) as report:
            adapter = self.adapter(request.model, request.dtype, request.device)
            return generate_images(request, adapter, interventions, report)

    def evaluate(
        self, request: EvaluationRequest, out: Path, progress: ProgressCallback | None = None
    ) -> EvaluationResult:
        delta = EditDelta.load(request.edit)  # bad input fails before the job waits for its turn
        dtype = request.dtype or str(delta.dtype).removeprefix("torch.")
        with self.queue.run(request.model, f"evaluate {Path(request.edit).name}", progress) as report:
            adapter = self.adapter(request.model, dtype, request.device)
            return evaluate_from_request(request, out, adapter=adapter, progress=report)
