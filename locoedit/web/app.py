"""The Gradio page of ``locoedit ui``: three tabs (Localize, Edit, Evaluate) and the job list every tab shares.

It only parses forms into the library's requests (defaults read from the request classes, as the CLI's are) and
renders results; the work goes through :class:`~locoedit.web.workbench.Workbench`. Errors show the CLI's one line.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from html import escape
from pathlib import Path

import numpy as np
import torch

from locoedit.core.errors import LocoeditError, user_message

try:
    import gradio as gr
except ImportError:
    raise LocoeditError('the web app needs Gradio: pip install -e ".[ui]" (then run locoedit ui again)') from None

from PIL import Image

from locoedit.core.formats import field_default
from locoedit.core.io import to_uint8
from locoedit.core.progress import ProgressCallback
from locoedit.core.seeds import parse_seeds, seeds_text
from locoedit.delta import EditDelta, export_with_card
from locoedit.edit import EditRequest
from locoedit.edit.request import TOKEN_CHOICES, parse_layers
from locoedit.edit.templates import KINDS
from locoedit.evaluate import TARGETS, EvaluationRequest, EvaluationResult, shipped_suites
from locoedit.localize import LocalizationRequest, LocalizationResult, parse_window
from locoedit.report.html import effect_plot_svg
from locoedit.web.jobs import Job, failure_line
from locoedit.web.workbench import Workbench
from locoedit.workflows.requests import GenerationRequest

logger = logging.getLogger(__name__)

L, E, G = LocalizationRequest, EditRequest, GenerationRequest
MODEL_DEFAULT_TOKEN = "the model's default"
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


def lines(text: str) -> tuple[str, ...]:
    """A text box's non-empty lines: one prompt (or concept) per line."""
    return tuple(line.strip() for line in (text or "").splitlines() if line.strip())


def optional_int(name: str, text: str) -> int | None:
    """A whole number typed in a box; an empty box is None (the library's default)."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise LocoeditError(
            f"{name} {text!r} is not a whole number; type one, or leave the box empty for the default"
        ) from None


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
    for name in ("efficacy", "generalization", "specificity", "other_attributes"):
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
    shown = [i for i, item in enumerate(result.items) if item.group == "concept"][:8]
    captions = [f"{result.items[i].prompt} (seed {result.items[i].seed})" for i in shown]
    return (
        [(picture(result.before[i]), c) for i, c in zip(shown, captions)],
        [(picture(result.after[i]), c) for i, c in zip(shown, captions)],
    )


def build_app(workbench: Workbench, model: str) -> gr.Blocks:
    runs = workbench.runs
    with gr.Blocks(title="locoedit", analytics_enabled=False) as blocks:
        gr.Markdown(
            "# locoedit\nLocalize a concept in a text-to-image model (LocoGen), edit it out in closed form "
            "(LocoEdit), and evaluate the edit."
        )
        model_box = gr.Textbox(
            model, label="Model", info="'toyworld', a local diffusers pipeline folder or a hub id", elem_id="model"
        )
        jobs = gr.Markdown(jobs_markdown([]), elem_id="jobs")
        gr.Timer(1.0).tick(
            lambda: jobs_markdown(workbench.queue.snapshot()), outputs=jobs, show_progress="hidden", queue=False
        )
        edit_state = gr.State(None)  # {"delta": path of the delta file, "images": the GenerationRequest shown}

        with gr.Tab("Localize", id="localize"), gr.Row():
            with gr.Column(scale=1):
                l_prompts = gr.Textbox(
                    label="Prompt (one per line)",
                    lines=2,
                    placeholder="a red striped circle on black",
                    elem_id="l-prompts",
                )
                l_targets = gr.Textbox(
                    label="Target: the prompt with the concept removed (one per prompt)",
                    lines=2,
                    placeholder="a red circle on black",
                    elem_id="l-targets",
                )
                l_concept = gr.Textbox(
                    label="Concept to score", info="empty: the words the target drops", elem_id="l-concept"
                )
                with gr.Row():
                    l_window = gr.Textbox(
                        str(field_default(L, "window")), label="Window size (m or auto)", elem_id="l-window"
                    )
                    l_seeds = gr.Textbox(seeds_text(field_default(L, "seeds")), label="Seeds", elem_id="l-seeds")
                    l_steps = gr.Textbox(label="Steps", info="empty: the model's", elem_id="l-steps")
                l_scorer = gr.Textbox(
                    label="Scorer", info="pixel, toyworld or clip:ID (empty: the model's)", elem_id="l-scorer"
                )
                l_out = gr.Textbox(
                    label="Run folder",
                    info="as `locoedit localize --out`; empty: a new one under the runs folder",
                    elem_id="l-out",
                )
                l_run = gr.Button("Localize", variant="primary", elem_id="l-run")
                with gr.Row():
                    l_open_folder = gr.Textbox(label="Open an existing run folder", scale=3, elem_id="l-open-folder")
                    l_open = gr.Button("Open", scale=1, elem_id="l-open")
            with gr.Column(scale=2):
                l_summary = gr.Markdown(elem_id="localize-summary")
                l_plot = gr.HTML()
                l_grid = gr.Gallery(
                    label="Images: original, target, then each window",
                    columns=4,
                    elem_id="localize-grid",
                    object_fit="contain",
                    height="auto",
                )

        with gr.Tab("Edit", id="edit"), gr.Row():
            with gr.Column(scale=1):
                e_concepts = gr.Textbox(label="Concept (one per line)", placeholder="circle", elem_id="e-concepts")
                e_targets = gr.Textbox(
                    label="Target",
                    info="what the concept becomes; empty: remove it",
                    placeholder="square",
                    elem_id="e-targets",
                )
                with gr.Row():
                    e_kind = gr.Dropdown(list(KINDS), value=field_default(E, "kind"), label="Kind", elem_id="e-kind")
                    e_token = gr.Dropdown(
                        [MODEL_DEFAULT_TOKEN, *TOKEN_CHOICES],
                        value=MODEL_DEFAULT_TOKEN,
                        label="Token rows",
                        elem_id="e-token",
                    )
                e_layers = gr.Textbox(
                    str(field_default(E, "layers")),
                    label="Layers",
                    info="auto (LocoGen first), indices like 2,3,4, or a run folder (filled in by the Localize tab)",
                    elem_id="e-layers",
                )
                e_templates = gr.Textbox(
                    label="Prompt templates with {c} (one per line)",
                    lines=2,
                    info="empty: the model's or the kind's templates",
                    elem_id="e-templates",
                )
                e_preserve = gr.Textbox(label="Preserve (one prompt per line)", lines=2, elem_id="e-preserve")
                with gr.Row():
                    e_preserve_scale = gr.Number(
                        field_default(E, "preserve_scale"), label="Preservation weight", elem_id="e-preserve-scale"
                    )
                    e_lambda_key = gr.Number(field_default(E, "lambda_key"), label="λ keys", elem_id="e-lambda-key")
                    e_lambda_value = gr.Number(
                        field_default(E, "lambda_value"), label="λ values", elem_id="e-lambda-value"
                    )
                    e_window = gr.Textbox(
                        str(field_default(E, "auto_window")), label="Window (auto)", elem_id="e-window"
                    )
                e_prompts = gr.Textbox(
                    label="Your prompts to see before and after (one per line)",
                    lines=2,
                    placeholder="a blue circle on white",
                    elem_id="e-prompts",
                )
                with gr.Row():
                    e_seeds = gr.Textbox(seeds_text(field_default(G, "seeds")), label="Seeds", elem_id="e-seeds")
                    e_steps = gr.Textbox(label="Steps", info="empty: the model's", elem_id="e-steps")
                e_out = gr.Textbox(
                    label="Delta file (.safetensors)",
                    info="empty: a new one under the runs folder",
                    elem_id="e-out",
                )
                e_run = gr.Button("Compute the edit", variant="primary", elem_id="e-run")
            with gr.Column(scale=2):
                e_summary = gr.Markdown(elem_id="edit-summary")
                e_strength = gr.Slider(
                    0,
                    1,
                    value=1,
                    step=0.05,
                    label="Strength",
                    info="scales the update: 0 = the original model, 1 = the edit",
                    elem_id="strength",
                )
                e_before = gr.Gallery(label="Before", columns=8, elem_id="before", object_fit="contain", height="auto")
                e_after = gr.Gallery(label="After", columns=8, elem_id="after", object_fit="contain", height="auto")
                e_file = gr.File(label="Delta file", elem_id="delta-file")
                with gr.Row():
                    e_kohya = gr.Button("Export LoRA (kohya)", elem_id="e-kohya")
                    e_peft = gr.Button("Export LoRA (peft)", elem_id="e-peft")
                e_lora = gr.File(label="LoRA file", elem_id="lora-file")

        with gr.Tab("Evaluate", id="evaluate"), gr.Row():
            with gr.Column(scale=1):
                v_delta = gr.Textbox(label="Delta file", info="filled in by the Edit tab", elem_id="v-delta")
                v_suite = gr.Dropdown(
                    [SUITE_FOR_DELTA, *shipped_suites()], value=SUITE_FOR_DELTA, label="Suite", elem_id="v-suite"
                )
                v_seeds = gr.Textbox(label="Seeds", info="empty: the suite's", elem_id="v-seeds")
                v_out = gr.Textbox(
                    label="Evaluation folder", info="empty: a new one under the runs folder", elem_id="v-out"
                )
                v_run = gr.Button("Evaluate", variant="primary", elem_id="v-run")
            with gr.Column(scale=2):
                v_link = gr.Markdown(elem_id="evaluate-link")
                v_table = gr.Dataframe(
                    headers=["metric", "value", "target", "met"],
                    label="Metrics",
                    interactive=False,
                    elem_id="metrics",
                )
                v_before = gr.Gallery(label="Before (concept prompts)", columns=8, object_fit="contain", height="auto")
                v_after = gr.Gallery(label="After", columns=8, object_fit="contain", height="auto")

        def run_localization(
            model, prompts, targets, concept, window, seeds, steps, scorer, out, progress=gr.Progress()
        ):
            with shown_errors():
                request = LocalizationRequest(
                    model=model.strip(),
                    prompts=lines(prompts),
                    targets=lines(targets),
                    concept=concept.strip(),
                    scorer=scorer.strip() or None,
                    window=parse_window(window.strip()),
                    seeds=parse_seeds(seeds),
                    steps=optional_int("steps", steps),
                )
                folder = Path(out.strip()) if out.strip() else workbench.fresh_folder("localize")
                result = workbench.localize(request, folder, progress_bar(progress))
                shown = localization_view(result, folder, runs)
            return (*shown, str(folder))

        def open_run(folder):
            with shown_errors():
                folder = Path(folder.strip())
                shown = localization_view(LocalizationResult.load(folder), folder, runs)
            return (*shown, str(folder))

        l_run.click(
            run_localization,
            [model_box, l_prompts, l_targets, l_concept, l_window, l_seeds, l_steps, l_scorer, l_out],
            [l_summary, l_plot, l_grid, e_layers],
        )
        l_open.click(open_run, [l_open_folder], [l_summary, l_plot, l_grid, e_layers])

        def compute_edit(
            model,
            concepts,
            targets,
            kind,
            token,
            layers,
            templates,
            preserve,
            preserve_scale,
            lambda_key,
            lambda_value,
            window,
            prompts,
            seeds,
            steps,
            out,
            progress=gr.Progress(),
        ):
            with shown_errors():
                request = EditRequest(
                    model=model.strip(),
                    concepts=lines(concepts),
                    targets=lines(targets) or ("",),
                    kind=kind,
                    prompts=lines(templates),
                    layers=parse_layers(layers),
                    preserve=lines(preserve),
                    preserve_scale=preserve_scale,
                    lambda_key=lambda_key,
                    lambda_value=lambda_value,
                    token=None if token == MODEL_DEFAULT_TOKEN else token,
                    auto_window=parse_window(window.strip() or "auto"),
                )
                images = GenerationRequest(
                    model.strip(), lines(prompts), parse_seeds(seeds), optional_int("steps", steps)
                )
                path = Path(out.strip()) if out.strip() else workbench.fresh_folder("edit") / "edit.safetensors"
                bar = progress_bar(progress)
                delta = workbench.edit(request, path, bar)
                before = workbench.generate(images, progress=bar)
                after = workbench.generate(images, delta, 1.0, bar)
            summary = (
                f"Edited layers {[layer['index'] for layer in delta.layers]}: {len(delta.parameters)} "
                f"matrices ({len(delta.factors)} stored as low-rank factors), "
                f"{delta.settings['concept_rows']} concept rows. Delta file `{path}`."
            )
            columns = gallery_columns(len(images.seeds))
            return (
                summary,
                gr.Gallery(generated_gallery(before, images), columns=columns),
                gr.Gallery(generated_gallery(after, images), columns=columns),
                1.0,
                str(path),
                {"delta": str(path), "images": images},
                str(path),
            )

        def rescale(strength, state, progress=gr.Progress()):
            with shown_errors():
                if state is None:
                    raise LocoeditError("compute an edit first; the strength scales its update")
                after = workbench.generate(
                    state["images"], EditDelta.load(state["delta"]), strength, progress_bar(progress)
                )
            return generated_gallery(after, state["images"])

        def export(state, format):
            with shown_errors():
                if state is None:
                    raise LocoeditError("compute an edit first, then export it as a LoRA")
                delta = Path(state["delta"])
                out = delta.parent / f"lora-{format}" / delta.name
                export_with_card(delta, format, out)
            return str(out)

        e_run.click(
            compute_edit,
            [
                model_box,
                e_concepts,
                e_targets,
                e_kind,
                e_token,
                e_layers,
                e_templates,
                e_preserve,
                e_preserve_scale,
                e_lambda_key,
                e_lambda_value,
                e_window,
                e_prompts,
                e_seeds,
                e_steps,
                e_out,
            ],
            [e_summary, e_before, e_after, e_strength, e_file, edit_state, v_delta],
        )
        e_strength.release(rescale, [e_strength, edit_state], [e_after])
        e_kohya.click(lambda state: export(state, "kohya"), [edit_state], [e_lora])
        e_peft.click(lambda state: export(state, "peft"), [edit_state], [e_lora])

        def run_evaluation(model, delta, suite, seeds, out, progress=gr.Progress()):
            with shown_errors():
                request = EvaluationRequest(
                    model=model.strip(),
                    edit=delta.strip(),
                    suite=None if suite == SUITE_FOR_DELTA else suite,
                    seeds=parse_seeds(seeds) if seeds.strip() else (),
                )
                folder = Path(out.strip()) if out.strip() else workbench.fresh_folder("evaluate")
                result = workbench.evaluate(request, folder, progress_bar(progress))
            before, after = evaluation_galleries(result)
            return (
                f"Suite `{result.suite.name}`, {len(result.items)} images before and after; "
                f"{report_link(folder, runs)}.",
                metric_rows(result),
                before,
                after,
            )

        v_run.click(run_evaluation, [model_box, v_delta, v_suite, v_seeds, v_out], [v_link, v_table, v_before, v_after])

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
