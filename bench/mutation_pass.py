"""Mutation testing of locoedit's core modules with mutmut (not part of CI: it takes tens of minutes on 2 cores).

    pip install mutmut==3.8.1          # pulls libcst, textual, coverage; not torch
    python bench/mutation_pass.py [--modules routing layers ...] [--work DIR] [--report FILE]

For each module, a scratch copy of the package and the tests as committed (``--revision``, default HEAD) is made
under ``--work`` (the working tree is never mutated, and ``pyproject.toml`` gets no mutmut section), with a ``setup.cfg`` that tells mutmut to mutate that one
module and to run only the test files that cover it. mutmut then runs those tests once to learn which tests call
which function, and runs each mutant against just those tests, in forked children of one process that has already
imported torch (one child at a time: two torch processes on 2 cores slow each other). mutmut's own forced-fail run
checks first that the tests import the mutated copy.

Prints, per module, killed / total and every surviving mutant as a diff; ``--report`` also writes them to a file.
mutmut does not mutate functions with decorators other than @classmethod / @staticmethod (@property,
@contextmanager, @torch.no_grad): those are listed as "not mutated" so that the score is not read as covering them.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: module -> the test files that exercise it (the whole suite per mutant would take ~50 s)
MODULES = {
    "routing": (
        "locoedit/interventions/routing.py",
        ["tests/interventions/test_routing.py", "tests/localize/test_localize.py"],
    ),
    "layers": ("locoedit/models/layers.py", ["tests/models/test_layers.py", "tests/models/test_adapters.py"]),
    "closed_form": ("locoedit/edit/closed_form.py", ["tests/edit/test_edit.py", "tests/interventions/test_delta.py"]),
    "lowrank": (
        "locoedit/core/lowrank.py",
        [
            "tests/core/test_lowrank.py",
            "tests/edit/test_edit.py",
            "tests/interventions/test_delta.py",
            "tests/interventions/test_delta_guarantees.py",
        ],
    ),
    "scoring": (
        "locoedit/scoring.py",
        ["tests/test_scoring.py", "tests/localize/test_localize.py", "tests/evaluate/test_evaluate_toyworld.py"],
    ),
    "delta": (
        "locoedit/delta/file.py",
        [
            "tests/interventions/test_delta.py",
            "tests/interventions/test_delta_guarantees.py",
            "tests/edit/test_edit.py",
            "tests/cli/test_edit_cli.py",
        ],
    ),
}


def decorated_functions(path: Path) -> list[str]:
    """Functions that mutmut leaves alone: decorated by anything but @classmethod / @staticmethod."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, (ast.Module, ast.ClassDef)):
            continue
        for child in node.body:
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and child.decorator_list:
                names = [ast.unparse(d) for d in child.decorator_list]
                if names not in (["classmethod"], ["staticmethod"]):
                    owner = f"{node.name}." if isinstance(node, ast.ClassDef) else ""
                    found.append(f"{owner}{child.name} (@{', @'.join(names)})")
    return found


def prepare(work: Path, module: str, tests: list[str], revision: str) -> None:
    """The package, the tests and pyproject.toml (pytest's settings; it has no [tool.mutmut]) as committed at
    ``revision``: a file being edited (or a bug planted by hand) in the working tree never leaks into the pass."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "locoedit", "tests", "pyproject.toml"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
    selection = "\n    ".join(tests)
    (work / "setup.cfg").write_text(
        "[mutmut]\n"
        "source_paths = locoedit\n"
        f"only_mutate = {module}\n"
        f"pytest_add_cli_args_test_selection =\n    {selection}\n"
        "use_git_change_detection = false\n"
    )


def mutmut(work: Path, *args: str, capture: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "mutmut", *args], cwd=work, env=env, text=True, capture_output=capture, check=False
    )


def run_module(name: str, work_root: Path, max_children: int, revision: str) -> dict:
    module, tests = MODULES[name]
    work = work_root / name
    prepare(work, module, tests, revision)
    started = time.perf_counter()
    run = mutmut(work, "run", "--max-children", str(max_children), capture=True)
    minutes = (time.perf_counter() - started) / 60
    if run.returncode != 0:
        sys.stdout.write(run.stdout[-4000:] + run.stderr[-4000:])
        raise SystemExit(f"mutmut run failed for {module} (exit {run.returncode})")
    status: dict[str, str] = {}
    for line in mutmut(work, "results", "--all", "true", capture=True).stdout.splitlines():
        key, _, value = line.strip().rpartition(": ")
        if key:
            status[key] = value
    survivors = {
        key: mutmut(work, "show", key, capture=True).stdout
        for key, value in sorted(status.items())
        if value != "killed"
    }
    counts = {value: list(status.values()).count(value) for value in sorted(set(status.values()))}
    return {
        "module": module,
        "tests": tests,
        "total": len(status),
        "killed": counts.get("killed", 0),
        "counts": counts,
        "minutes": round(minutes, 1),
        "survivors": survivors,
        "not_mutated": decorated_functions(ROOT / module),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modules", nargs="+", choices=sorted(MODULES), default=list(MODULES))
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/locoedit-mutation"),
        help="scratch folder for the mutated copies (outside the working tree)",
    )
    parser.add_argument("--max-children", type=int, default=1)
    parser.add_argument("--revision", default="HEAD", help="the commit whose code and tests are used")
    parser.add_argument("--report", type=Path, help="also write the results (JSON) here")
    args = parser.parse_args(argv)
    if args.work.resolve().is_relative_to(ROOT):
        raise SystemExit("--work must be outside the working tree")
    revision = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", args.revision], check=True, capture_output=True, text=True
    ).stdout.strip()
    print(f"mutation pass of commit {revision}")
    results = []
    for name in args.modules:
        result = run_module(name, args.work.resolve(), args.max_children, revision)
        result["revision"] = revision
        results.append(result)
        print(
            f"\n## {result['module']}: {result['killed']}/{result['total']} killed "
            f"({result['counts']}, {result['minutes']} min)"
        )
        for key, diff in result["survivors"].items():
            print(f"\n### {key}\n{diff.strip()}")
        if result["not_mutated"]:
            print("\nnot mutated (decorated):", "; ".join(result["not_mutated"]))
        if args.report:
            args.report.write_text(json.dumps(results, indent=2) + "\n")
    print("\n| module | killed / total | score |\n|---|---|---|")
    for result in results:
        score = 100 * result["killed"] / result["total"] if result["total"] else float("nan")
        print(f"| `{result['module']}` | {result['killed']}/{result['total']} | {score:.0f}% |")


if __name__ == "__main__":
    main()
