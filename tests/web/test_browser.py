"""`locoedit ui` end to end in a real browser (Debian's chromium driven by Playwright) on the toy world: localize with
2 seeds, see the plot and the grid, compute an edit from that run, see the after-images change and the strength
slider at 0 bring back the originals, download the delta and load it, see the LoRA refusal and a bad input as one
line, evaluate while a second browser tab watches the job list.

Screenshots of each tab go to a temporary folder, or to docs/ with LOCOEDIT_UPDATE_SCREENSHOTS=1 (for the README).
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from locoedit.delta.file import EditDelta
from locoedit.localize import LocalizationResult
from locoedit.report.browser import find_chromium

pytest.importorskip("gradio", reason="the web app needs gradio (pip install -e '.[test]' or '.[ui]')")
playwright = pytest.importorskip(
    "playwright.sync_api", reason="the browser test needs playwright (pip install -e '.[test]')"
)
CHROMIUM = find_chromium()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="needs Chromium (Debian: apt-get install -y chromium, or set $LOCOEDIT_CHROMIUM)"
    ),
]

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_MS = 90_000  # the longest job here (the evaluation) on 2 shared cores


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python -m locoedit ui` in a subprocess on a free port, one torch thread, run folders in a temporary folder."""
    folder = tmp_path_factory.mktemp("ui")
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), GRADIO_ANALYTICS_ENABLED="False")
    process = subprocess.Popen(
        [sys.executable, "-m", "locoedit", "ui", "--port", str(port), "--runs", "runs"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"locoedit ui did not serve {url}:\n{process.stdout.read()}")
            time.sleep(0.25)
    yield url, folder / "runs"
    process.terminate()
    process.wait(30)


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as driver:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        chromium = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def _screenshot(page, name: str, tmp_path: Path) -> None:
    folder = REPO / "docs" if os.environ.get("LOCOEDIT_UPDATE_SCREENSHOTS") == "1" else tmp_path
    page.locator("#jobs", has_text="done").wait_for()  # the job list catches up within its 1 s refresh
    page.wait_for_function("!document.querySelector('#jobs').innerText.includes('running')")
    page.screenshot(path=str(folder / f"ui-{name}.png"), full_page=True)


def _sources(page, gallery: str) -> list[str]:
    return page.locator(f"#{gallery} img").evaluate_all("images => images.map(image => image.src)")


def _wait_for_sources(page, gallery: str, sources: list[str]) -> None:
    page.wait_for_function(
        "([gallery, sources]) => JSON.stringify([...document.querySelectorAll(`#${gallery} img`)]"
        ".map(image => image.src)) == JSON.stringify(sources)",
        arg=[gallery, sources],
    )


def _error_line(page) -> str:
    """The text of the error the page shows, then closes it."""
    message = page.locator(".toast-message-text").last
    message.wait_for(state="attached")
    text = message.text_content().strip()
    page.locator(".toast-close").last.click()
    page.locator(".toast-message-text").wait_for(state="detached")
    return text


def test_localize_edit_and_evaluate_in_the_browser(server, browser, tmp_path):
    url, runs = server
    page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)

    # Localize: 2 seeds, windows of 3 of the toy world's 11 layers.
    page.locator("#l-prompts textarea").fill("a red circle on black")
    page.locator("#l-targets textarea").fill("a red shape on black")
    page.locator("#l-window textarea").fill("3")
    page.locator("#l-seeds textarea").fill("0,1")
    page.locator("#l-run").click()
    page.locator("#effect-plot svg rect").first.wait_for()
    assert page.locator("#effect-plot svg rect").count() == 9  # one bar per window
    page.wait_for_function("document.querySelectorAll('#localize-grid img').length == 22")  # (2 + 9 windows) x 2
    summary = page.locator("#localize-summary").inner_text()
    _screenshot(page, "localize", tmp_path)

    # Edit the concept in the layers the run chose (the Edit tab's layers box holds the run folder).
    page.get_by_role("tab", name="Edit").click()
    run_folder = page.locator("#e-layers textarea").input_value()
    assert Path(run_folder).parent == Path("runs")  # relative to the server's working folder, as typed
    result = LocalizationResult.load(runs.parent / run_folder)  # the run folder is written like the CLI's
    assert len(result.seeds) == 2 and f"Chosen window: layers {result.chosen.layers}" in summary
    page.locator("#e-concepts textarea").fill("circle")
    page.locator("#e-targets textarea").fill("square")
    page.locator("#g-prompts textarea").fill("a red circle on black\na blue circle on white")
    page.locator("#g-seeds textarea").fill("0,1")
    page.locator("#e-run").click()
    page.wait_for_function("document.querySelectorAll('#after img').length == 4")
    before, after = _sources(page, "before"), _sources(page, "after")
    assert len(before) == 4 and any(b != a for b, a in zip(before, after))  # the edit changes the images
    assert f"Edited layers {result.chosen.layers}" in page.locator("#edit-summary").inner_text()

    with page.expect_download() as download:
        page.locator("#delta-file a").first.click()
    saved = tmp_path / "downloaded.safetensors"
    download.value.save_as(saved)
    delta = EditDelta.load(saved)
    assert [layer["index"] for layer in delta.layers] == result.chosen.layers
    assert delta.settings["concepts"] == ["circle"]

    page.locator("#e-kohya").click()  # the toy world's edit is of full rank: no LoRA, and the page says why
    refusal = _error_line(page)
    assert refusal.startswith("error: ") and "stored as new values" in refusal and "\n" not in refusal

    page.locator("#strength input[type=range]").scroll_into_view_if_needed()
    slider = page.locator("#strength input[type=range]").bounding_box()
    page.mouse.click(slider["x"] + 1, slider["y"] + slider["height"] / 2)  # strength 0: the original model
    _wait_for_sources(page, "after", before)
    page.mouse.click(slider["x"] + slider["width"] - 1, slider["y"] + slider["height"] / 2)  # back to the edit
    _wait_for_sources(page, "after", after)
    _screenshot(page, "edit", tmp_path)

    # Evaluate the edit with its shipped suite, one seed, while a second tab watches the job list.
    page.get_by_role("tab", name="Evaluate").click()
    assert EditDelta.load(runs.parent / page.locator("#v-edit textarea").input_value()).digest() == delta.digest()
    page.locator("#v-seeds textarea").fill("0")
    page.locator("#v-run").click()
    watcher = browser.new_page()
    watcher.goto(url)
    watcher.locator("#jobs", has_text="running").filter(has_text="evaluate").wait_for()
    page.locator("#metrics").filter(has_text="efficacy").wait_for()
    watcher.locator("#jobs").filter(has_text="evaluate").filter(has_text="done").wait_for()
    watcher.close()
    link = page.locator("#evaluate-link a")
    with urllib.request.urlopen(url.rstrip("/") + link.get_attribute("href")) as report:
        assert b"<html" in report.read(2000)
    _screenshot(page, "evaluate", tmp_path)

    # Bad input: one line naming the problem and the fix, no traceback.
    page.get_by_role("tab", name="Localize").click()
    page.locator("#l-prompts textarea").fill("")
    page.locator("#l-run").click()
    assert _error_line(page) == "error: prompts is empty; give at least one original prompt (--prompt)"
    assert "Traceback" not in page.content()
