"""The Gradio page's own logic, without a browser: form parsing and the one-line errors it shows."""

import pytest

gr = pytest.importorskip("gradio", reason="the web app needs gradio (pip install -e '.[test]' or '.[ui]')")

from locoedit.core.errors import LocoeditError
from locoedit.localize import LocalizationRequest
from locoedit.web.app import gallery_columns, jobs_markdown, shown_errors
from locoedit.web.forms import given_values
from locoedit.web.jobs import Job


def test_a_user_error_is_shown_as_the_cli_line():
    with pytest.raises(gr.Error) as caught, shown_errors():
        LocalizationRequest(model="toyworld", prompts=(), targets=("a red circle on black",))
    assert caught.value.message == "error: prompts is empty; give at least one original prompt (--prompt)"


def test_a_bug_is_one_line_without_a_traceback():
    with pytest.raises(gr.Error) as caught, shown_errors():
        {}["missing"]
    assert caught.value.message.startswith("error: KeyError inside locoedit (a bug")
    assert "\n" not in caught.value.message and "Traceback" not in caught.value.message


def test_boxes_parse_to_request_fields():
    names = ["prompts", "steps", "window", "seeds", "scorer"]
    given = given_values(LocalizationRequest, names, [" a red circle \n\n a blue square\n", 12.0, "3", "0,1", " "])
    assert given == {"prompts": ("a red circle", "a blue square"), "steps": 12, "window": 3, "seeds": (0, 1)}
    assert given_values(LocalizationRequest, names[1:], [None, "2", "0-3", ""]) == {}  # empty or as shown: not given
    assert given_values(LocalizationRequest, ["steps", "guidance"], ["12", "7.5"]) == {"steps": 12, "guidance": 7.5}
    with pytest.raises(LocoeditError, match="window 'many' is neither an integer nor 'auto'"):
        given_values(LocalizationRequest, ["window"], ["many"])
    with pytest.raises(LocoeditError, match="steps 'many' is not a whole number; type one, or leave the box empty"):
        given_values(LocalizationRequest, ["steps"], ["many"])


def test_the_job_list_and_grids():
    assert "No jobs yet" in jobs_markdown([])
    table = jobs_markdown([Job(1, "toyworld", "edit 'a|b'", "failed", message="error: x")])
    assert "| 1 | toyworld | edit 'a\\|b' | failed | error: x |" in table
    assert [gallery_columns(n) for n in (1, 2, 3, 8, 12)] == [8, 8, 6, 8, 12]  # whole groups per row
