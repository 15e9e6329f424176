"""`locoedit sweep` under `accelerate launch` with two processes: every job's folder and the index; a bad spec is
one line, from the main process, before anything is written."""

import json

import pytest

from locoedit.localize import LocalizationResult
from tests.distributed.launch import launch
from tests.workflows.test_sweep import spec_file, three_jobs


@pytest.mark.slow
def test_three_jobs_on_two_processes(tiny_sd_folder, tmp_path):
    out = tmp_path / "sweep"
    done = launch(["sweep", str(spec_file(tmp_path, three_jobs(tiny_sd_folder))), "--out", str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    index = json.loads((out / "sweep.json").read_text())
    assert index["processes"] == 2 and [row["name"] for row in index["jobs"]] == ["house", "house-3", "dog"]
    for row in index["jobs"]:
        result = LocalizationResult.load(out / row["name"])
        assert result.timings["processes"] == 2 and row["chosen"] == result.chosen.layers
        assert (out / row["report"]).is_file()
    assert done.stdout.count("wrote ") == 1


@pytest.mark.slow
def test_a_bad_spec_is_one_line_under_the_launcher(tmp_path):
    spec = spec_file(
        tmp_path, {"jobs": [{"model": "toyworld", "prompts": ["a red circle"], "targets": ["a circle"], "windw": 3}]}
    )
    done = launch(["sweep", str(spec), "--out", str(tmp_path / "out")])
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "unknown keys ['windw']" in errors[0]
    assert not (tmp_path / "out").exists()
