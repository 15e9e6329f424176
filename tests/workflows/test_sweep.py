"""`locoedit sweep`: many LocoGen jobs from one spec, one run folder each, an index; bad specs are one line."""

import json

import pytest
from typer.testing import CliRunner

import locoedit.workflows.sweep as sweep_module
from locoedit.cli import app
from locoedit.localize import LocalizationRequest, LocalizationResult, localize
from locoedit.workflows.sweep import SweepSpec, run_sweep

JOB = {
    "prompts": ["a house in the style of van gogh"],
    "targets": ["a house"],
    "scorer": "pixel",
    "window": 2,
    "seeds": [0, 1],
    "steps": 2,
    "device": "cpu",
}


def spec_file(tmp_path, data, name="spec.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def three_jobs(model) -> dict:
    """Three jobs on one model: two window sizes and a second concept."""
    return {
        "defaults": {**JOB, "model": str(model)},
        "jobs": [
            {"name": "house"},
            {"name": "house-3", "window": 3},
            {"name": "dog", "prompts": ["a dog in the style of van gogh"], "targets": ["a dog"]},
        ],
    }


def test_a_sweep_writes_a_run_folder_per_job_and_an_index(tiny_sd_folder, tmp_path, monkeypatch):
    loads = []
    load = sweep_module.load_adapter
    monkeypatch.setattr(sweep_module, "load_adapter", lambda *a, **k: loads.append(a) or load(*a, **k))
    out = tmp_path / "sweep"
    index = run_sweep(SweepSpec.load(spec_file(tmp_path, three_jobs(tiny_sd_folder))), out)
    assert len(loads) == 1  # the model is loaded once for the three jobs
    assert [row.name for row in index.jobs] == ["house", "house-3", "dog"]
    data = json.loads((out / "sweep.json").read_text())
    assert data["format"] == "locoedit.sweep/1" and data["processes"] == 1
    html = (out / "index.html").read_text()
    for row in data["jobs"]:
        result = LocalizationResult.load(out / row["name"])
        assert row["chosen"] == result.chosen.layers and row["effect"] == result.chosen.effect
        assert (out / row["report"]).is_file() and f"href='{row['report']}'" in html
    assert LocalizationResult.load(out / "house-3").window_size == 3
    # A job's folder holds what `locoedit localize` alone would write for its request.
    alone = localize(
        LocalizationRequest(
            model=str(tiny_sd_folder), **{k: tuple(v) if isinstance(v, list) else v for k, v in JOB.items()}
        )
    )
    assert [w.effects for w in alone.windows] == [w.effects for w in LocalizationResult.load(out / "house").windows]


def test_the_same_sweep_again_resumes_and_another_is_refused(tiny_sd_folder, tmp_path):
    out, spec = tmp_path / "sweep", three_jobs(tiny_sd_folder)
    runner = CliRunner()
    first = runner.invoke(app, ["sweep", str(spec_file(tmp_path, spec)), "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert "house: 'in the style of van gogh' -> layers" in first.stdout
    again = run_sweep(SweepSpec.load(spec_file(tmp_path, spec)), out)
    assert [row.denoiser_calls for row in again.jobs] == [0, 0, 0]  # every window read back, none generated
    spec["jobs"][0]["seeds"] = [0, 1, 2]
    other = runner.invoke(app, ["sweep", str(spec_file(tmp_path, spec)), "--out", str(out)])
    assert other.exit_code == 2 and "holds a different run (differs in: jobs)" in other.stderr


def test_screen_applies_to_the_jobs_that_set_none(tiny_sd_folder, tmp_path):
    spec = three_jobs(tiny_sd_folder)
    spec["defaults"]["steps"] = 4
    spec["jobs"][1]["screen"] = {"steps": 1, "seeds": 1, "top_k": 1}
    from locoedit.localize import Screen

    jobs = SweepSpec.load(spec_file(tmp_path, spec), Screen(2, 1, 2)).jobs
    assert [str(job.request.screen) for job in jobs] == ["2:1:2", "1:1:1", "2:1:2"]


@pytest.mark.parametrize(
    "data, message",
    [
        (
            {"jobs": [{**JOB, "model": "toyworld", "windw": 3}]},
            "job 1 has unknown keys ['windw']; allowed: name, model",
        ),
        ({"jobs": [], "format": "locoedit.sweep-spec/1"}, "lists no jobs"),
        ({"job": [{**JOB, "model": "toyworld"}]}, "has unknown keys ['job']; allowed: format, defaults, jobs"),
        (
            {"jobs": [{**JOB, "model": "toyworld", "name": "a"}, {**JOB, "model": "{missing}", "name": "b"}]},
            "job 'b': model folder",
        ),
        ({"jobs": [{**JOB, "model": "toyworld", "seeds": "0-3"}]}, "job 1: job.seeds should be a list"),
        ({"jobs": [{**JOB, "model": "toyworld", "name": "../up"}]}, "is not a plain folder name"),
        ({"jobs": [{**JOB, "model": "toyworld", "name": "a"}] * 2}, "job names ['a'] repeat"),
        (
            {
                "jobs": [
                    {
                        **JOB,
                        "model": "toyworld",
                        "name": "fine",
                        "prompts": ["a red circle on black"],
                        "targets": ["a red shape on black"],
                        "scorer": "toyworld",
                    },
                    {**JOB, "model": "toyworld", "name": "long"},
                ]
            },
            "job 'long': prompt 'a house in the style of van gogh' has 17 tokens",
        ),
    ],
)
def test_a_bad_spec_is_one_line_and_nothing_is_written(tmp_path, data, message):
    text = json.dumps(data).replace("{missing}", str(tmp_path / "no-such-model"))
    spec = tmp_path / "spec.json"
    spec.write_text(text)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["sweep", str(spec), "--out", str(out)])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["spec.json"]
