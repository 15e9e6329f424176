"""Plain generation with any supported model: one image per (prompt, seed), written with a JSON record."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from locoedit.adapters import Adapter, GenerationSettings, load_adapter
from locoedit.errors import LocoeditError
from locoedit.io import write_json, write_png


@dataclass(frozen=True)
class GenerationRequest:
    model: str
    prompts: tuple[str, ...]
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    steps: int | None = None
    guidance: float | None = None
    size: int | None = None
    dtype: str = "float32"
    device: str | None = None

    def __post_init__(self):
        if not self.prompts or not all(p.strip() for p in self.prompts):
            raise LocoeditError("give at least one non-empty --prompt")
        if not self.seeds:
            raise LocoeditError("seeds is empty; give e.g. --seeds 0-3")


def settings_for(
    adapter: Adapter, steps: int | None, guidance: float | None, height: int | None, width: int | None
) -> GenerationSettings:
    """The adapter's defaults, with whatever the user set."""
    defaults = adapter.default_settings()
    return GenerationSettings(
        steps or defaults.num_inference_steps,
        defaults.guidance_scale if guidance is None else guidance,
        height or defaults.height,
        width or defaults.width,
    )


def generate_to_folder(request: GenerationRequest, out: str | Path, adapter: Adapter | None = None) -> dict:
    from locoedit.localize import DTYPES

    if request.dtype not in DTYPES:
        raise LocoeditError(f"dtype {request.dtype!r} is unknown; use one of {', '.join(DTYPES)}")
    adapter = adapter or load_adapter(request.model, DTYPES[request.dtype], request.device)
    settings = settings_for(adapter, request.steps, request.guidance, request.size, request.size)
    out = Path(out)
    rows = [(p, seed) for p in range(len(request.prompts)) for seed in request.seeds]
    encoded = adapter.encode(list(request.prompts)).take([p for p, _ in rows])
    with tqdm(total=settings.num_inference_steps, desc="generating", unit="step", leave=False) as bar:
        images = adapter.generate(encoded, [seed for _, seed in rows], settings, on_step=bar.update)
    records = []
    for (p, seed), image in zip(rows, images):
        path = f"p{p}_s{seed}.png"
        write_png(out / path, image)
        records.append({"prompt": request.prompts[p], "seed": seed, "path": path})
    record = {"request": asdict(request), "settings": settings.to_json(), "images": records}
    write_json(out / "generation.json", record)
    return record
