"""LocoGen: find the window of cross-attention layers that controls a concept.

For each window of ``m`` consecutive cross-attention layers (in execution order), generate with the target
prompt (concept removed) fed to the window and the original prompt fed to every other layer; the window whose
swap removes most of the concept (highest scorer ``effect``) is where the concept is controlled.

Windows are every run of ``m`` consecutive layers: ``[i, i + m)`` for ``i = 0 .. L - m``, so there are
``L - m + 1`` of them and every one has exactly ``m`` layers. (The paper's script instead let the last windows
shrink to the layers that remain; we never shrink a window.)

``exact`` mode runs one denoising loop per window, as the paper does. ``batched`` mode runs ``chunk`` windows in
one loop, one batch row per (window, prompt, seed); both start every row from noise seeded by its seed alone,
so they give the same images up to float round-off.
"""

from __future__ import annotations

import difflib
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from locoedit import __version__
from locoedit.adapters import Adapter, GenerationSettings, load_adapter
from locoedit.errors import LocoeditError
from locoedit.generate import settings_for
from locoedit.io import write_json, write_png, write_safetensors, write_text
from locoedit.routing import Routing
from locoedit.scoring import Scorer, make_scorer

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MODES = ("exact", "batched")


def infer_concept(prompt: str, target: str) -> str:
    """The words of ``prompt`` that ``target`` drops, e.g. ("a house in the style of Van Gogh", "a house")."""
    words, kept = prompt.split(), target.split()
    matcher = difflib.SequenceMatcher(a=words, b=kept, autojunk=False)
    dropped = [w for tag, i1, i2, _, _ in matcher.get_opcodes() if tag in ("delete", "replace") for w in words[i1:i2]]
    return " ".join(dropped)


@dataclass(frozen=True)
class LocalizationRequest:
    """Everything that determines a LocoGen run. Validates on construction; serialises to JSON."""

    model: str
    prompts: tuple[str, ...]
    targets: tuple[str, ...]
    concept: str = ""  # scored text; empty = the words the targets drop from the prompts
    scorer: str = "pixel"
    window: int | str = 2  # an integer m, or "auto": the smallest m whose best window passes auto_threshold
    auto_threshold: float = 0.5  # fraction of the effect of routing *all* layers that a window must reach
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    steps: int | None = None  # None = the model family's default
    guidance: float | None = None
    height: int | None = None
    width: int | None = None
    scheduler: str | None = None  # a diffusers scheduler class name; None = the pipeline's own
    mode: str = "batched"
    chunk: int = 8  # windows per denoising loop in batched mode
    dtype: str = "float32"
    device: str | None = None
    route_added_text: bool = False

    def __post_init__(self):
        for name in ("prompts", "targets", "seeds"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, (str, int)) else tuple(value))
        if not self.prompts:
            raise LocoeditError("prompts is empty; give at least one original prompt (--prompt)")
        if len(self.prompts) != len(self.targets):
            raise LocoeditError(
                f"got {len(self.prompts)} prompts and {len(self.targets)} targets; give one target per prompt, "
                "in the same order"
            )
        for prompt, target in zip(self.prompts, self.targets):
            if not prompt.strip() or not target.strip():
                raise LocoeditError("a prompt or target is empty; every --prompt and --target needs text")
            if prompt.strip() == target.strip():
                raise LocoeditError(
                    f"target {target!r} equals its prompt; the target must be the prompt with the concept removed"
                )
        if not self.concept:
            concepts = {infer_concept(p, t) for p, t in zip(self.prompts, self.targets)}
            if len(concepts) != 1 or not next(iter(concepts)):
                raise LocoeditError(
                    f"cannot infer one concept from the prompts and targets (got {sorted(concepts)}); pass --concept"
                )
            object.__setattr__(self, "concept", concepts.pop())
        if not self.seeds:
            raise LocoeditError("seeds is empty; give at least one seed (--seeds 0,1,2,3)")
        if self.window != "auto" and (isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1):
            raise LocoeditError(f"window {self.window!r} is invalid; give an integer m >= 1 or 'auto'")
        if not 0 < self.auto_threshold <= 1:
            raise LocoeditError(f"auto_threshold {self.auto_threshold} must be in (0, 1]")
        if self.mode not in MODES:
            raise LocoeditError(f"mode {self.mode!r} is unknown; use 'exact' or 'batched'")
        if self.chunk < 1:
            raise LocoeditError(f"chunk {self.chunk} must be >= 1 (windows per denoising loop)")
        if self.dtype not in DTYPES:
            raise LocoeditError(f"dtype {self.dtype!r} is unknown; use one of {', '.join(DTYPES)}")
        for name in ("steps", "height", "width"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise LocoeditError(f"{name} must be a positive integer, got {value}")

    def to_json(self) -> dict:
        data = asdict(self)
        for name in ("prompts", "targets", "seeds"):
            data[name] = list(data[name])
        return data

    @classmethod
    def from_json(cls, data: dict) -> LocalizationRequest:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class WindowResult:
    layers: list[int]
    effect: float  # mean over prompts x seeds
    effect_std: float
    effects: list[float]  # per (prompt, seed), prompt-major
    images: list[str]  # paths relative to the run folder

    @property
    def key(self) -> str:
        return _window_key(self.layers)


@dataclass
class Sweep:
    window_size: int
    windows: list[WindowResult]

    def best(self) -> WindowResult:
        return max(self.windows, key=lambda w: w.effect)


@dataclass
class LocalizationResult:
    request: LocalizationRequest
    settings: GenerationSettings
    layers: list[dict]
    full_swap_effect: float  # the effect of routing every layer (= generating from the target)
    sweeps: list[Sweep]
    timings: dict = field(default_factory=dict)

    @property
    def final(self) -> Sweep:
        return self.sweeps[-1]

    @property
    def chosen(self) -> WindowResult:
        return self.final.best()

    def to_json(self) -> dict:
        chosen = self.chosen
        return {
            "model": self.request.model,
            "request": self.request.to_json(),
            "settings": self.settings.to_json(),
            "concept": self.request.concept,
            "seeds": list(self.request.seeds),
            "layers": self.layers,
            "window_size": self.final.window_size,
            "full_swap_effect": self.full_swap_effect,
            "windows": [asdict(w) for w in self.final.windows],
            "chosen": {
                "layers": chosen.layers,
                "names": [self.layers[i]["name"] for i in chosen.layers],
                "effect": chosen.effect,
                "effect_std": chosen.effect_std,
            },
            "sweeps": [{"window_size": s.window_size, "windows": [asdict(w) for w in s.windows]} for s in self.sweeps],
            "images": {"original": _image_paths("original", self.request), "target": _image_paths("target", self.request)},
            "versions": _versions(),
            "timings": self.timings,
        }


def _versions() -> dict:
    import diffusers
    import transformers

    return {"locoedit": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__}


def _image_paths(group: str, request: LocalizationRequest) -> list[str]:
    return [f"images/{group}/p{p}_s{seed}.png" for p in range(len(request.prompts)) for seed in request.seeds]


def _mean_std(values: torch.Tensor) -> tuple[float, float]:
    std = values.std().item() if values.numel() > 1 else 0.0
    return values.mean().item(), std


class RunFolder:
    """The on-disk state of one run: request, reference images, one progress file per finished window."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def claim(self, request: LocalizationRequest) -> None:
        """Refuse a folder that holds anything but this same request; then record the request."""
        request_file = self.path / "request.json"
        if request_file.is_file():
            stored = json.loads(request_file.read_text())
            if stored != request.to_json():
                differing = sorted(k for k in request.to_json() if stored.get(k) != request.to_json()[k])
                raise LocoeditError(
                    f"output folder {self.path} holds a different run (differs in: {', '.join(differing)}); "
                    "choose another --out, or delete the folder to start over"
                )
        elif self.path.exists() and any(self.path.iterdir()):
            raise LocoeditError(
                f"output folder {self.path} is not empty and holds no locoedit run; choose an empty or new --out"
            )
        write_json(request_file, request.to_json())

    def load_tensors(self, name: str) -> dict[str, torch.Tensor] | None:
        from safetensors.torch import load_file

        file = self.path / "progress" / f"{name}.safetensors"
        return load_file(file) if file.is_file() else None

    def save_tensors(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        write_safetensors(self.path / "progress" / f"{name}.safetensors", tensors)

    def finished(self, key: str) -> WindowResult | None:
        file = self.path / "progress" / f"{key}.json"
        return WindowResult(**json.loads(file.read_text())) if file.is_file() else None

    def record(self, result: WindowResult) -> None:
        write_json(self.path / "progress" / f"{result.key}.json", asdict(result))

    def write_images(self, group: str, images: torch.Tensor, request: LocalizationRequest) -> list[str]:
        paths = _image_paths(group, request)
        for relative, image in zip(paths, images):
            write_png(self.path / relative, image)
        return paths


def _windows(num_layers: int, size: int) -> list[tuple[int, ...]]:
    return [tuple(range(start, start + size)) for start in range(num_layers - size + 1)]


@contextmanager
def _scheduler(adapter: Adapter, name: str | None) -> Iterator[None]:
    """Use the diffusers scheduler class ``name`` (None: the pipeline's own) for the span of the context."""
    if name is None:
        yield
        return
    import diffusers

    scheduler_class = getattr(diffusers, name, None)
    if scheduler_class is None or not name.endswith("Scheduler"):
        raise LocoeditError(f"scheduler {name!r} is not a diffusers scheduler class; e.g. DDIMScheduler")
    previous = adapter.pipe.scheduler
    adapter.pipe.scheduler = scheduler_class.from_config(previous.config)
    try:
        yield
    finally:
        adapter.pipe.scheduler = previous


ORIGINAL, TARGET = "original", "target"  # the two unrouted image groups every sweep is measured against
Group = str | tuple[int, ...]  # ORIGINAL, TARGET, or a window's layer indices


def _window_key(layers) -> str:
    return f"window_{layers[0]:02d}-{layers[-1]:02d}"


class LocoGen:
    """Runs a :class:`LocalizationRequest` on an adapter, optionally persisting to (and resuming from) a folder.

    Every denoising loop generates a list of *groups*, each one row per (prompt, seed): the unrouted
    prompts (ORIGINAL), the unrouted targets (TARGET), or the prompts with a window routed to the targets.
    Exact mode runs the two reference groups in one loop, then one loop per window; batched mode runs
    ``chunk`` windows per loop, the reference groups joining the first.
    """

    def __init__(self, request: LocalizationRequest, adapter: Adapter, scorer: Scorer, run: RunFolder | None,
                 progress: bool = True):
        self.request = request
        self.adapter = adapter
        self.scorer = scorer
        self.run = run
        self.progress = progress
        self.settings = settings_for(adapter, request.steps, request.guidance, request.height, request.width)
        # One row per (prompt, seed), prompt-major: the unit that every window is generated and scored on.
        self.rows = [(p, seed) for p in range(len(request.prompts)) for seed in request.seeds]
        self.timings = {"generation_s": 0.0, "scoring_s": 0.0}
        # Prompts and targets encoded together: row p is prompt p, row P + p its target.
        self.encoded = adapter.encode(list(request.prompts) + list(request.targets))
        self.reference: torch.Tensor | None = None  # [rows, 3, H, W] the unrouted prompts' images
        self.target_images: torch.Tensor | None = None  # [rows, 3, H, W] the unrouted targets' images

    def _generate(self, groups: list[Group], bar: tqdm) -> list[torch.Tensor]:  # per group [rows, 3, H, W]
        num_prompts = len(self.request.prompts)
        prompt_rows, target_rows, seeds, routes = [], [], [], []
        for group in groups:
            for p, seed in self.rows:
                prompt_rows.append(p + num_prompts if group == TARGET else p)
                target_rows.append(p + num_prompts)
                seeds.append(seed)
                routes.append(group if isinstance(group, tuple) else ())
        routing = Routing(tuple(routes), self.request.route_added_text) if any(routes) else None
        start = time.perf_counter()
        images = self.adapter.generate(
            self.encoded.take(prompt_rows), seeds, self.settings, self.encoded.conditional.take(target_rows),
            routing, bar.update,
        )
        self.timings["generation_s"] += time.perf_counter() - start
        return list(images.split(len(self.rows)))

    def _effects(self, images: torch.Tensor) -> torch.Tensor:  # [rows]
        start = time.perf_counter()
        effect = self.scorer.effect(self.reference, images, self.request.concept)
        self.timings["scoring_s"] += time.perf_counter() - start
        return effect

    def _bar(self, loops: int, description: str) -> tqdm:
        return tqdm(total=loops * self.settings.num_inference_steps, desc=description, unit="step",
                    disable=not self.progress, leave=False)

    def _store_references(self, original: torch.Tensor, target: torch.Tensor) -> None:
        self.reference, self.target_images = original, target
        if self.run:
            self.run.write_images(ORIGINAL, original, self.request)
            self.run.write_images(TARGET, target, self.request)
            # Kept as float tensors so that a resumed run scores against exactly the same images.
            self.run.save_tensors("reference", {ORIGINAL: original, TARGET: target})

    def _sweep(self, size: int) -> Sweep:
        windows = _windows(len(self.adapter.layers), size)
        results = {w: self.run.finished(_window_key(w)) for w in windows} if self.run else {}
        pending = [w for w in windows if results.get(w) is None]
        per_loop = 1 if self.request.mode == "exact" else self.request.chunk
        loops: list[list[Group]] = [pending[i : i + per_loop] for i in range(0, len(pending), per_loop)]
        if self.reference is None:
            if self.request.mode == "exact" or not loops:
                loops.insert(0, [])
            loops[0] = [ORIGINAL, TARGET] + loops[0]
        with self._bar(len(loops), f"windows of {size}") as bar:
            for loop in loops:
                generated = dict(zip(loop, self._generate(loop, bar)))
                if ORIGINAL in generated:
                    self._store_references(generated.pop(ORIGINAL), generated.pop(TARGET))
                for window, images in generated.items():
                    effects = self._effects(images)
                    mean, std = _mean_std(effects)
                    key = _window_key(window)
                    paths = self.run.write_images(key, images, self.request) if self.run else []
                    results[window] = WindowResult(list(window), mean, std, effects.tolist(), paths)
                    if self.run:
                        self.run.record(results[window])
                    logger.info("window %s: effect %.4f +- %.4f", list(window), mean, std)
        return Sweep(size, [results[w] for w in windows])

    def run_all(self) -> LocalizationResult:
        started = time.perf_counter()
        request, num_layers = self.request, len(self.adapter.layers)
        stored = self.run.load_tensors("reference") if self.run else None
        if stored is not None:
            self.reference, self.target_images = stored[ORIGINAL], stored[TARGET]
        sizes = [request.window] if request.window != "auto" else range(1, num_layers + 1)
        sweeps, full_swap = [], None
        for size in sizes:
            sweeps.append(self._sweep(size))
            if full_swap is None:
                full_swap, _ = _mean_std(self._effects(self.target_images))
            if request.window != "auto" or sweeps[-1].best().effect >= request.auto_threshold * full_swap:
                break
        self.timings["total_s"] = time.perf_counter() - started
        layer_table = [layer.describe() for layer in self.adapter.layers]
        return LocalizationResult(request, self.settings, layer_table, full_swap, sweeps, dict(self.timings))


def localize(
    request: LocalizationRequest,
    out: str | Path | None = None,
    adapter: Adapter | None = None,
    scorer: Scorer | None = None,
    progress: bool = True,
) -> LocalizationResult:
    """Run LocoGen. With ``out``, write the run folder (JSON, images, report) and resume a run stopped part way."""
    if adapter is None:
        adapter = load_adapter(request.model, DTYPES[request.dtype], request.device)
    num_layers = len(adapter.layers)
    if request.window != "auto" and request.window > num_layers:
        raise LocoeditError(
            f"window {request.window} is larger than the model's {num_layers} cross-attention layers; "
            f"give --window between 1 and {num_layers}"
        )
    if scorer is None:
        scorer = make_scorer(request.scorer, adapter.device)
    with _scheduler(adapter, request.scheduler):
        run = None
        if out is not None:
            run = RunFolder(out)
            run.claim(request)
        result = LocoGen(request, adapter, scorer, run, progress).run_all()
    if run is not None:
        from locoedit.report import localization_report_html

        write_json(run.path / "localization.json", result.to_json())
        write_text(run.path / "report.html", localization_report_html(result.to_json()))
    return result

