"""The docs site builds strictly, its generated references cover the code, and the README stays a short front door.

The site is built once per module, into a temporary folder, exactly as a user would (`mkdocs build --strict` in the
repository root); the generated pages are then read back from the built HTML.
"""

import os
import pkgutil
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RUN_COMMAND = "pip install -e . && locoedit demo"
TEST_COMMAND = 'pip install -e ".[test]" && python -m pytest -q'
MAX_README_LINES = 200


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Build the site; fail with mkdocs' own output when it does not build."""
    out = tmp_path_factory.mktemp("site")
    env = dict(
        os.environ,
        NO_MKDOCS_2_WARNING="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, (
        f"mkdocs build --strict failed (exit {proc.returncode}, {seconds:.1f} s):\n{proc.stdout}\n{proc.stderr}"
    )
    return out


@pytest.mark.slow
def test_site_builds_strictly(site):
    assert (site / "index.html").is_file()
    assert (site / "reference" / "cli" / "index.html").is_file()
    assert (site / "reference" / "api" / "index.html").is_file()


def _commands(command, path):
    yield " ".join(path)
    for name, sub in sorted((getattr(command, "commands", None) or {}).items()):
        if not getattr(sub, "hidden", False):
            yield from _commands(sub, [*path, name])


@pytest.mark.slow
def test_cli_reference_lists_every_command(site):
    import typer

    from locoedit.cli import app

    commands = list(_commands(typer.main.get_command(app), ["locoedit"]))
    assert len(commands) > 10
    html = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    missing = [c for c in commands if f"<code>{c}</code>" not in html]
    assert not missing, f"commands missing from the generated CLI reference: {missing}"


def _public_modules(folder: Path, prefix: str):
    for info in pkgutil.iter_modules([str(folder)]):
        name = prefix + info.name
        if info.name.startswith("_") or name == "locoedit.testing":
            continue
        yield name
        if info.ispkg:
            yield from _public_modules(folder / info.name, name + ".")


@pytest.mark.slow
def test_api_reference_has_a_page_per_public_module(site):
    modules = ["locoedit", *_public_modules(ROOT / "locoedit", "locoedit.")]
    missing = [m for m in modules if not (site / "reference" / "api" / m / "index.html").is_file()]
    assert not missing, f"modules without an API page: {missing}"
    assert not (site / "reference" / "api" / "locoedit.testing").exists()


def test_readme_is_short_and_keeps_the_set_up_commands():
    text = README.read_text(encoding="utf-8")
    lines = text.count("\n") + (not text.endswith("\n"))
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines (at most {MAX_README_LINES}); move the rest to docs/"
    )
    code_lines = {line.strip() for line in text.splitlines()}
    assert RUN_COMMAND in code_lines, f"README.md must keep the set-up command: {RUN_COMMAND}"
    assert TEST_COMMAND in code_lines, f"README.md must keep the test command (.ci/run runs it): {TEST_COMMAND}"


_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)


def test_readme_relative_links_point_to_files():
    text = README.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)  # code blocks hold no links
    targets = _LINK.findall(text) + _REFERENCE.findall(text)
    relative = [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.IGNORECASE) and not t.startswith("#")]
    assert relative, "README.md links into docs/ and should keep doing so"
    broken = [t for t in relative if not (ROOT / t.split("#", 1)[0]).is_file()]
    assert not broken, f"README.md links to files that do not exist: {broken}"
