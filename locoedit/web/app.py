"""The Gradio page of ``locoedit ui``: three tabs (Localize, Edit, Evaluate) and the job list every tab shares.

It only parses forms into the library's requests (defaults read from the request classes, as the CLI's are) and
renders results; the work goes through :class:`~locoedit.web.workbench.Workbench`. Errors show the CLI's one line.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import torch

from locoedit.core.errors import LocoeditError, user_message

try:
    import gradio as gr
except ImportError:
    raise LocoeditError('the web app needs Gradio: pip install -e ".[ui]" (then run locoedit ui again)') from None

from PIL import Image

from locoedit.core.io import to_uint8
from locoedit.core.params import settings_of
from locoedit.core.progress import ProgressCallback
from locoedit.delta import EditDelta, export_with_card
from locoedit.edit import EDIT_METHODS, EditRequestCore
from locoedit.evaluate import TARGETS, EvaluationRequest, EvaluationResult, shipped_suites
from locoedit.localize import LocalizationRequest, LocalizationResult
from locoedit.models.names import request_for
from locoedit.report.html import effect_plot_svg
from locoedit.web.forms import build_form, form_settings, given_values
from locoedit.web.jobs import Job, failure_line
from locoedit.web.workbench import Workbench
from locoedit.workflows.requests import GenerationRequest

logger = logging.getLogger(__name__)

SUITE_FOR_DELTA = "the shipped suite for the delta's concept"
SHOWN_SIDE = 128  # small images (the toy world's 32 x 32) are enlarged to this many pixels, without smoothing


@contextmanager
def shown_errors() -> Iterator[None]:
    """Any failure as the CLI's one line in the page (a Gradio error), never a traceback; a bug's traceback goes to
    the server's log."""
    try:
        yield
    except Exception as error:
        if user_message(error) is None:
            logger.error("unexpected error", exc_info=error)
        raise gr.Error(failure_line(error), duration=None, print_exception=False) from None


def progress_bar(progress: gr.Progress) -> ProgressCallback:
    """The library's progress events drawn as Gradio's bar, as the CLI draws them as tqdm bars."""
    return lambda event: progress((event.done, event.total), desc=event.task, unit=event.unit)


def picture(image: torch.Tensor) -> np.ndarray:  # [3, H, W] in [0, 1] -> [H k, W k, 3] uint8
    pixels = to_uint8(image)
    scale = max(1, SHOWN_SIDE // max(pixels.shape[:2]))
    return pixels.repeat(scale, axis=0).repeat(scale, axis=1)


def picture_file(path: Path) -> np.ndarray:
    pixels = np.asarray(Image.open(path).convert("RGB"))
    return picture(torch.from_numpy(pixels.copy()).permute(2, 0, 1) / 255)


def gallery_columns(per_group: int) -> int:
    """Columns of an image grid whose rows hold whole groups (one image per prompt and seed each)."""
    return per_group * max(1, 8 // per_group)


def generated_gallery(images: torch.Tensor, request: GenerationRequest) -> list[tuple[np.ndarray, str]]:
    captions = [f"{prompt} (seed {seed})" for prompt in request.prompts for seed in request.seeds]
    return [(picture(image), caption) for image, caption in zip(images, captions)]


def report_link(folder: Path, runs: Path) -> str:
    """A link to the folder's report.html, served under /runs when the folder is under the runs folder."""
    try:
        relative = folder.resolve().relative_to(runs.resolve())
    except ValueError:
        return f"report: `{folder / 'report.html'}`"
    return f'<a href="/runs/{escape(relative.as_posix())}/report.html" target="_blank">open the HTML report</a>'


def jobs_markdown(jobs: list[Job]) -> str:
    if not jobs:
        return "No jobs yet. Jobs run one at a time per model; every browser tab sees this list."
    cell = lambda text: str(text).replace("|", "\\|")
    rows = ["| # | model | job | state | progress |", "|---|---|---|---|---|"]
    rows += [
        f"| {job.id} | {cell(job.model)} | {cell(job.title)} | {job.state} | {cell(job.message or job.progress)} |"
        for job in jobs
    ]
    return "\n".join(rows)


def localization_view(result: LocalizationResult, folder: Path, runs: Path):
    """Summary, per-window effect plot and image grid of a LocoGen run folder."""
    chosen = result.chosen
    summary = (
        f"**Chosen window: layers {chosen.layers}** (effect {chosen.effect:.4g} ± {chosen.effect_std:.2g}; "
        f"routing every layer: {result.full_swap_effect:.4g}) for concept “{escape(result.concept)}”, "
        f"window size {result.window_size}, scorer `{result.request.scorer}`. Run folder `{folder}`; "
        f"{report_link(folder, runs)}."
    )
    plot = f"<div id='effect-plot'>{effect_plot_svg(result.windows, len(result.layers), chosen.layers)}</div>"
    request = result.request
    columns = [f"p{p} s{seed}" for p in range(len(request.prompts)) for seed in request.seeds]
    groups = [("original", result.images.original), ("target", result.images.target)]
    groups += [
        (f"layers {w.layers[0]}-{w.layers[-1]}" + (" (chosen)" if w.layers == chosen.layers else ""), w.images)
        for w in result.windows
    ]
    items = [
        (picture_file(folder / path), f"{label}, {column}")
        for label, paths in groups
        for path, column in zip(paths, columns)
    ]
    return summary, plot, gr.Gallery(value=items, columns=gallery_columns(len(columns)))


def metric_rows(result: EvaluationResult) -> list[list[str]]:
    headline, met = result.headline, result.meets_targets()

    def shown(value, rate: bool) -> str:
        return "–" if value is None else (f"{100 * value:.1f}%" if rate else f"{value:.4g}")

    rows = []
    for name in ("efficacy", "adoption", "generalization", "specificity", "lookalikes", "other_attributes"):
        target = TARGETS.get(name)
        verdict = {None: "–", True: "yes", False: "no"}[met.get(name)]
        rows.append(
            [
                name.replace("_", " "),
                shown(getattr(headline, name), True),
                "–" if target is None else f">= {100 * target:.0f}%",
                verdict,
            ]
        )
    for name in ("concept_score_before", "concept_score_after", "ssim", "psnr", "frechet_distance"):
        rows.append([name.replace("_", " "), shown(getattr(headline, name), False), "–", "–"])
    return rows


def evaluation_galleries(result: EvaluationResult):
    """The concept prompts' images before and after the edit (what efficacy counts), at most 8 of each."""
    assert result.before is not None and result.after is not None  # a result just computed holds its images
    shown = [i for i, item in enumerate(result.items) if item.group == "concept"][:8]
    captions = [f"{result.items[i].prompt} (seed {result.items[i].seed})" for i in shown]
    return (
        [(picture(result.before[i]), c) for i, c in zip(shown, captions)],
        [(picture(result.after[i]), c) for i, c in zip(shown, captions)],
    )


@dataclass
class Forms:
    """The components one tab hands another: the Localize tab fills the Edit tab's layers, the Edit tab the
    Evaluate tab's delta file."""

    model: Any
    edit_layers: Any = None
    evaluate_delta: Any = None


# What a first LocoGen run sets; the rest (--adopt, the sampler, the device) waits under "More settings".
LOCALIZE_FIRST_SETTINGS = ("prompts", "targets", "concept", "scorer", "window", "auto_threshold", "seeds")


def localize_tab(workbench: Workbench, forms: Forms):
    """The Localize tab: every LocoGen setting, a run folder, and the chosen window's plot and grid. Returns the
    wiring to run once the Edit tab (whose layers it fills in) exists."""
    names = form_settings(LocalizationRequest)
    shown_first = [name for name in names if name in LOCALIZE_FIRST_SETTINGS]
    with gr.Tab("Localize", id="localize"), gr.Row():
        with gr.Column(scale=1):
            widgets = build_form(LocalizationRequest, "l", shown_first)
            with gr.Accordion("More settings", open=False):
                widgets |= build_form(LocalizationRequest, "l", [name for name in names if name not in shown_first])
            out = gr.Textbox(
                label="Run folder",
                info="as `locoedit localize --out`; empty: a new one under the runs folder",
                elem_id="l-out",
            )
            run = gr.Button("Localize", variant="primary", elem_id="l-run")
            with gr.Row():
                open_folder = gr.Textbox(label="Open an existing run folder", scale=3, elem_id="l-open-folder")
                open_button = gr.Button("Open", scale=1, elem_id="l-open")
        with gr.Column(scale=2):
            summary = gr.Markdown(elem_id="localize-summary")
            plot = gr.HTML()
            grid = gr.Gallery(
                label="Images: original, target, then each window",
                columns=4,
                elem_id="localize-grid",
                object_fit="contain",
                height="auto",
            )

    def run_localization(model, *values, progress=gr.Progress()):
        *settings, folder_text = values
        with shown_errors():
            given = {"model": model.strip(), **given_values(LocalizationRequest, list(widgets), settings)}
            request = request_for(LocalizationRequest, "localize", given)
            folder = Path(folder_text.strip()) if folder_text.strip() else workbench.fresh_folder("localize")
            result = workbench.localize(request, folder, progress_bar(progress))
            shown = localization_view(result, folder, workbench.runs)
        return (*shown, str(folder))

    def open_run(folder):
        with shown_errors():
            folder = Path(folder.strip())
            shown = localization_view(LocalizationResult.load(folder), folder, workbench.runs)
        return (*shown, str(folder))

    def wire() -> None:
        outputs = [summary, plot, grid, forms.edit_layers]
        run.click(run_localization, [forms.model, *widgets.values(), out], outputs)
        open_button.click(open_run, [open_folder], outputs)

    return wire


def edit_settings_form(prefix: str = "e") -> tuple[Any, dict[str, tuple[type, list[str], dict[str, Any]]]]:
    """The method choice, the settings every edit method shares, and each method's own settings in an accordion:
    method name -> (request class, setting names, widgets)."""
    # Methods that edit layers: the context_embedder baseline (none, and LocoEdit's settings again) is the CLI's
    # `context-edit` and Python's.
    methods = {name: method for name, method in EDIT_METHODS.items() if method.layered}
    method = gr.Radio(list(methods), value="locoedit", label="Method", elem_id=f"{prefix}-method")
    core = form_settings(EditRequestCore)
    shared = build_form(EditRequestCore, prefix, core[:6])
    with gr.Accordion("Localization and loading", open=False):
        shared |= build_form(EditRequestCore, prefix, core[6:])
    per_method = {}
    for name, edit_method in methods.items():
        own = [n for n in form_settings(edit_method.request) if n not in core]
        with gr.Accordion(f"{name} settings", open=False):
            widgets = build_form(edit_method.request, prefix, own)
        per_method[name] = (edit_method.request, [*core, *own], shared | widgets)
    return method, per_method


def edit_tab(workbench: Workbench, forms: Forms):
    """The Edit tab: any edit method's settings, before/after images of your prompts, the strength slider, LoRA
    export at that strength. Returns the wiring to run once the Evaluate tab (which its edits fill in) exists."""
    with gr.Tab("Edit", id="edit"), gr.Row():
        with gr.Column(scale=1):
            method, per_method = edit_settings_form()
            forms.edit_layers = per_method["locoedit"][2]["layers"]
            preview_names = ["prompts", "seeds", "steps"]
            gr.Markdown("Your prompts to see before and after the edit:")
            preview = build_form(GenerationRequest, "g", preview_names)
            out = gr.Textbox(
                label="Delta file (.safetensors)", info="empty: a new one under the runs folder", elem_id="e-out"
            )
            run = gr.Button("Compute the edit", variant="primary", elem_id="e-run")
        with gr.Column(scale=2):
            summary = gr.Markdown(elem_id="edit-summary")
            strength = gr.Slider(
                0,
                1,
                value=1,
                step=0.05,
                label="Strength",
                elem_id="strength",
                info="scales the update: 0 = the original model, 1 = the edit (LoRA exports use it too)",
            )
            before = gr.Gallery(label="Before", columns=8, elem_id="before", object_fit="contain", height="auto")
            after = gr.Gallery(label="After", columns=8, elem_id="after", object_fit="contain", height="auto")
            delta_file = gr.File(label="Delta file", elem_id="delta-file")
            with gr.Row():
                export_buttons = {f: gr.Button(f"Export LoRA ({f})", elem_id=f"e-{f}") for f in ("kohya", "peft")}
            lora_file = gr.File(label="LoRA file", elem_id="lora-file")
    state = gr.State(None)  # {"delta": path of the delta file, "images": the GenerationRequest shown}
    widgets = {name: w for _, _, ws in per_method.values() for name, w in ws.items()}
    order = list(widgets)

    def compute(model, method_name, *values, progress=gr.Progress()):
        edit_values, preview_values, out_text = values[: len(order)], values[len(order) : -1], values[-1]
        request_class, names, _ = per_method[method_name]
        by_name = dict(zip(order, edit_values))
        with shown_errors():
            given = {"model": model.strip(), **given_values(request_class, names, [by_name[n] for n in names])}
            given.setdefault("targets", ("",))  # an empty target box removes the concept (the CLI's --target '')
            request = request_for(request_class, EDIT_METHODS[method_name].command, given)
            images = request_for(
                GenerationRequest,
                "generate",
                {"model": model.strip(), **given_values(GenerationRequest, preview_names, preview_values)},
            )
            path = Path(out_text.strip()) if out_text.strip() else workbench.fresh_folder("edit") / "edit.safetensors"
            bar = progress_bar(progress)
            delta = workbench.edit(request, path, bar)
            shown = [workbench.generate(images, progress=bar), workbench.generate(images, delta, 1.0, bar)]
        columns = gallery_columns(len(images.seeds))
        galleries = [gr.Gallery(generated_gallery(pictures, images), columns=columns) for pictures in shown]
        return (
            edit_summary(delta, path),
            *galleries,
            1.0,
            str(path),
            {"delta": str(path), "images": images},
            str(path),
        )

    def wire() -> None:
        run.click(
            compute,
            [forms.model, method, *widgets.values(), *preview.values(), out],
            [summary, before, after, strength, delta_file, state, forms.evaluate_delta],
        )
        strength.release(rescale(workbench), [strength, state], [after])
        for lora_format, button in export_buttons.items():
            button.click(export_lora_file(lora_format), [state, strength], [lora_file])

    return wire


def edit_summary(delta: EditDelta, path: Path) -> str:
    layers = [layer["index"] for layer in delta.layers]
    if delta.method == "neurons":
        count = sum(len(item["neurons"]) for item in delta.settings["chosen_neurons"])
        return f"Replaced {count} neurons in layers {layers}. Delta file `{path}`."
    edited = f"layers {layers}" if layers else ", ".join(delta.parameters)  # uce-context: no layers
    return (
        f"Edited {edited}: {len(delta.parameters)} matrices ({len(delta.factors)} stored as low-rank "
        f"factors), {delta.settings['concept_rows']} concept rows. Delta file `{path}`."
    )


def rescale(workbench: Workbench):
    def handler(strength, state, progress=gr.Progress()):
        with shown_errors():
            if state is None:
                raise LocoeditError("compute an edit first; the strength scales its update")
            after = workbench.generate(
                state["images"], EditDelta.load(state["delta"]), strength, progress_bar(progress)
            )
        return generated_gallery(after, state["images"])

    return handler


def export_lora_file(lora_format: str):
    def handler(state, strength):
        with shown_errors():
            if state is None:
                raise LocoeditError("compute an edit first, then export it as a LoRA")
            delta = Path(state["delta"])
            out = delta.parent / f"lora-{lora_format}" / delta.name
            export_with_card(delta, lora_format, out, strength=strength)
        return str(out)

    return handler


def evaluate_tab(workbench: Workbench, forms: Forms) -> None:
    """The Evaluate tab: every evaluation setting (the suite among the shipped ones), the metrics and images."""
    names = form_settings(EvaluationRequest)
    with gr.Tab("Evaluate", id="evaluate"), gr.Row():
        with gr.Column(scale=1):
            widgets = build_form(EvaluationRequest, "v", ["edit"])
            widgets["suite"] = gr.Dropdown(
                [SUITE_FOR_DELTA, *shipped_suites()],
                value=SUITE_FOR_DELTA,
                label="Suite",
                elem_id="v-suite",
                allow_custom_value=True,
                info=settings_of(EvaluationRequest)["suite"][1].help,
            )
            widgets |= build_form(EvaluationRequest, "v", ["seeds"])
            with gr.Accordion("More settings", open=False):
                widgets |= build_form(EvaluationRequest, "v", [n for n in names if n not in widgets])
            out = gr.Textbox(label="Evaluation folder", info="empty: a new one under the runs folder", elem_id="v-out")
            run = gr.Button("Evaluate", variant="primary", elem_id="v-run")
        with gr.Column(scale=2):
            link = gr.Markdown(elem_id="evaluate-link")
            table = gr.Dataframe(
                headers=["metric", "value", "target", "met"], label="Metrics", interactive=False, elem_id="metrics"
            )
            before = gr.Gallery(label="Before (concept prompts)", columns=8, object_fit="contain", height="auto")
            after = gr.Gallery(label="After", columns=8, object_fit="contain", height="auto")
    forms.evaluate_delta = widgets["edit"]
    order = list(widgets)

    def run_evaluation(model, *values, progress=gr.Progress()):
        *settings, folder_text = values
        with shown_errors():
            chosen = [None if v == SUITE_FOR_DELTA else v for v in settings]
            given = {"model": model.strip(), **given_values(EvaluationRequest, order, chosen)}
            request = request_for(EvaluationRequest, "evaluate", given)
            folder = Path(folder_text.strip()) if folder_text.strip() else workbench.fresh_folder("evaluate")
            result = workbench.evaluate(request, folder, progress_bar(progress))
        shown_before, shown_after = evaluation_galleries(result)
        return (
            f"Suite `{result.suite.name}`, {len(result.items)} images before and after; "
            f"{report_link(folder, workbench.runs)}.",
            metric_rows(result),
            shown_before,
            shown_after,
        )

    run.click(run_evaluation, [forms.model, *widgets.values(), out], [link, table, before, after])


def build_app(workbench: Workbench, model: str) -> gr.Blocks:
    with gr.Blocks(title="locoedit", analytics_enabled=False) as blocks:
        gr.Markdown(
            "# locoedit\nLocalize a concept in a text-to-image model (LocoGen), edit it out in closed form "
            "(LocoEdit), and evaluate the edit."
        )
        forms = Forms(
            gr.Textbox(
                model, label="Model", info="'toyworld', a local diffusers pipeline folder or a hub id", elem_id="model"
            )
        )
        jobs = gr.Markdown(jobs_markdown([]), elem_id="jobs")
        gr.Timer(1.0).tick(
            lambda: jobs_markdown(workbench.queue.snapshot()), outputs=jobs, show_progress="hidden", queue=False
        )
        wire_localize = localize_tab(workbench, forms)
        wire_edit = edit_tab(workbench, forms)
        evaluate_tab(workbench, forms)
        wire_localize()  # each tab hands the next one a path: wired once every tab exists
        wire_edit()
    # Every job reaches the workbench's queue at once, which runs them one at a time per model and lists them.
    blocks.queue(default_concurrency_limit=None)
    return blocks


def check_port_free(host: str, port: int) -> None:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            raise LocoeditError(f"port {port} on {host} is in use; pass another --port") from None


def serve(
    model: str, port: int, runs: str | Path, host: str = "127.0.0.1", announce: Callable[[str], None] | None = None
) -> None:
    """Serve the app at http://HOST:PORT until interrupted; run folders go under ``runs``, served at /runs.
    ``announce`` gets the address once the port is known to be free and the page is built."""
    import uvicorn
    from fastapi import FastAPI
    from fastapi.staticfiles import StaticFiles

    check_port_free(host, port)
    runs = Path(runs)
    runs.mkdir(parents=True, exist_ok=True)
    server = FastAPI()
    server.mount("/runs", StaticFiles(directory=runs), name="runs")
    server = gr.mount_gradio_app(server, build_app(Workbench(runs), model), path="", allowed_paths=[str(runs)])
    if announce is not None:
        announce(f"http://{host}:{port}")
    uvicorn.run(server, host=host, port=port, log_level="warning")
