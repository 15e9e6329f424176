"""Check an HTML report in headless Chromium: does it render, does every image load, does every link resolve.

Used by the report tests and available to the demo (a screenshot next to the report). Needs a Chromium binary
(Debian: ``apt-get install -y chromium``); :func:`find_chromium` returns None when there is none.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
_MARKER = "locoedit-page-check"
# Appended to a copy of the page: after the load event, write what loaded into the DOM for --dump-dom to show.
_PROBE_SCRIPT = (
    "<script>window.addEventListener('load',function(){var broken=[];"
    "Array.prototype.forEach.call(document.images,function(i){if(!(i.complete&&i.naturalWidth>0))"
    "broken.push(i.getAttribute('src'))});var p=document.createElement('pre');p.id='" + _MARKER + "';"
    "p.textContent=JSON.stringify({images:document.images.length,broken:broken,"
    "svg:document.querySelectorAll('svg').length,title:document.title});document.body.appendChild(p)});</script>"
)


def find_chromium() -> str | None:
    """The Chromium binary to use: $LOCOEDIT_CHROMIUM, else the first of CHROMIUM_CANDIDATES on this machine."""
    for candidate in (os.environ.get("LOCOEDIT_CHROMIUM"), *CHROMIUM_CANDIDATES):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


class _References(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img" and attrs.get("src"):
            self.images.append(attrs["src"])
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])


def local_references(html_file: str | Path) -> dict[str, list[str]]:
    """The ``<img src>`` and ``<a href>`` targets of a page, and those that are missing on disk (relative ones)."""
    html_file = Path(html_file)
    parser = _References()
    parser.feed(html_file.read_text())
    missing = []
    for reference in parser.images + parser.links:
        url = urlparse(reference)
        if url.scheme in ("http", "https", "mailto", "data") or reference.startswith("#"):
            continue
        target = Path(unquote(url.path)) if url.scheme == "file" else html_file.parent / unquote(url.path)
        if not target.exists():
            missing.append(reference)
    return {"images": parser.images, "links": parser.links, "missing": missing}


@dataclass
class PageCheck:
    images: int  # <img> elements the browser saw
    broken_images: list[str]  # their src where the browser could not load them
    svgs: int
    title: str
    missing_references: list[str]  # img src / a href (relative) that do not exist on disk
    screenshot: Path | None
    log: str = field(default="", repr=False)

    @property
    def ok(self) -> bool:
        return not self.broken_images and not self.missing_references


def _run(chromium: str, args: list[str], profile: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [chromium, *_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def check_page(
    html_file: str | Path,
    screenshot: str | Path | None = None,
    window: tuple[int, int] = (1280, 2400),
    chromium: str | None = None,
    timeout: float = 60.0,
) -> PageCheck:
    """Load ``html_file`` in headless Chromium; report broken images and links; optionally save a PNG screenshot."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError(
            "no Chromium found; install it (Debian: apt-get install -y chromium) or set $LOCOEDIT_CHROMIUM"
        )
    html_file = Path(html_file).resolve()
    references = local_references(html_file)
    # The probing copy sits next to the page so that relative image paths resolve the same way.
    handle, probe_name = tempfile.mkstemp(dir=html_file.parent, prefix=f".{html_file.stem}.check.", suffix=".html")
    os.close(handle)
    probe = Path(probe_name)
    with tempfile.TemporaryDirectory(prefix="locoedit-chromium-") as profile:
        try:
            probe.write_text(html_file.read_text().replace("</body>", _PROBE_SCRIPT + "</body>"))
            dump = _run(chromium, ["--virtual-time-budget=5000", "--dump-dom", probe.as_uri()], profile, timeout)
        finally:
            probe.unlink(missing_ok=True)
        if screenshot is not None:
            screenshot = Path(screenshot).resolve()
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            shot = _run(
                chromium,
                [f"--screenshot={screenshot}", f"--window-size={window[0]},{window[1]}", html_file.as_uri()],
                profile,
                timeout,
            )
            if not screenshot.is_file():
                raise RuntimeError(f"Chromium wrote no screenshot (exit {shot.returncode}): {shot.stderr[-2000:]}")
    start = dump.stdout.find(f'id="{_MARKER}">')
    if start < 0:
        raise RuntimeError(
            f"the page did not finish loading in Chromium (exit {dump.returncode}): {dump.stderr[-2000:]}"
        )
    text = dump.stdout[start + len(f'id="{_MARKER}">') :]
    found = json.loads(
        text[: text.index("</pre>")]
        .replace("&quot;", '"')
        .replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
    )
    return PageCheck(
        found["images"], found["broken"], found["svg"], found["title"], references["missing"], screenshot, dump.stderr
    )
