"""Progress: the library emits events; the command line draws bars only on a terminal or when asked."""

from typer.testing import CliRunner

from locoedit.cli import app
from locoedit.cli.progress import TerminalProgress, terminal_progress
from locoedit.core.progress import ProgressEvent, ProgressTask
from locoedit.localize import LocalizationRequest, localize
from locoedit.scoring import PixelScorer


def test_localize_reports_each_denoising_step(tiny_adapters):
    events = []
    request = LocalizationRequest(
        model="tiny",
        prompts=("a house in the style of van gogh",),
        targets=("a house",),
        window=3,
        seeds=(0,),
        steps=2,
        chunk=2,
    )
    localize(request, adapter=tiny_adapters["sd"], scorer=PixelScorer(), progress=events.append)
    windows = len(tiny_adapters["sd"].layers) - 2
    loops = -(-windows // 2)
    # First, one batch per group (the original, the target): every process needs them to score.
    references = [e for e in events if e.task == "references"]
    assert references[0] == ProgressEvent("references", 0, 4) and [e.done for e in references] == [0, 1, 2, 3, 4]
    sweep = [e for e in events if e.task == "windows of 3"]
    assert events == references + sweep and sweep[0] == ProgressEvent("windows of 3", 0, loops * 2)
    assert [e.done for e in sweep] == list(range(loops * 2 + 1)) and sweep[-1].finished


def test_a_task_without_a_callback_is_silent():
    task = ProgressTask(None, "quiet", 3)
    task.advance()
    assert task.done == 1


def test_bars_only_on_a_terminal_or_when_asked():
    assert terminal_progress(False) is None
    assert isinstance(terminal_progress(True), TerminalProgress)
    assert terminal_progress(None) is None  # pytest's stderr is not a terminal


def test_the_cli_draws_bars_with_progress_and_not_without(tiny_sd_folder, tmp_path):
    args = ["generate", str(tiny_sd_folder), "--prompt", "a house", "--seeds", "0", "--steps", "2", "--size", "16"]
    quiet = CliRunner().invoke(app, args + ["--out", str(tmp_path / "a")])
    loud = CliRunner().invoke(app, ["--progress"] + args + ["--out", str(tmp_path / "b")])
    assert quiet.exit_code == 0 and loud.exit_code == 0, quiet.output + loud.output
    assert "generating" not in quiet.output and "\r" not in quiet.output
    assert "generating" in loud.output
