"""Typed JSON records: a format key on write, one reader, one clear line for another or a newer format."""

import json
from dataclasses import dataclass, field

import pytest

from locoedit.core.errors import LocoeditError
from locoedit.core.formats import JsonRecord, from_plain


@dataclass(frozen=True)
class Inner:
    name: str
    values: tuple[int, ...]


@dataclass(frozen=True)
class Sample(JsonRecord):
    FORMAT = "locoedit.sample/2"

    title: str
    inner: Inner
    items: list[Inner]
    scale: float
    note: str | None = None
    extra: dict[str, float] = field(default_factory=dict)


SAMPLE = Sample("t", Inner("a", (1, 2)), [Inner("b", ())], 2, None, {"x": 1.5})


def test_round_trip_through_a_file(tmp_path):
    path = SAMPLE.write(tmp_path / "sample.json")
    data = json.loads(path.read_text())
    assert data["format"] == "locoedit.sample/2" and data["inner"] == {"name": "a", "values": [1, 2]}
    assert Sample.read(path) == SAMPLE
    assert isinstance(Sample.read(path).scale, float)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"format": "locoedit.other/1"}, "holds a 'locoedit.other/1' file, not 'locoedit.sample/2'"),
        ({"format": "locoedit.sample/3"}, "is in format locoedit.sample/3, newer than this locoedit"),
        ({"inner": {"name": "a"}}, "is damaged: Sample.inner lacks the field 'values'"),
        ({"scale": "big"}, "is damaged: Sample.scale should be a number"),
        ({"items": {"name": "b"}}, "is damaged: Sample.items should be a list"),
        ({"inner": {"name": "a", "values": [1, "2"]}}, "Sample.inner.values[1] should be an integer"),
    ],
)
def test_another_newer_or_damaged_file_gets_one_line(tmp_path, change, message):
    path = tmp_path / "sample.json"
    path.write_text(json.dumps({**SAMPLE.to_json(), **change}))
    with pytest.raises(LocoeditError) as error:
        Sample.read(path)
    assert message in str(error.value) and str(path) in str(error.value) and "\n" not in str(error.value)


def test_older_versions_and_unversioned_files_are_read(tmp_path):
    data = SAMPLE.to_json()
    assert Sample.from_json({**data, "format": "locoedit.sample/1"}) == SAMPLE
    del data["format"]  # written by locoedit 0.1, before formats were versioned
    assert Sample.from_json(data) == SAMPLE


def test_not_json_and_missing_files(tmp_path):
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(LocoeditError, match="is not valid JSON"):
        Sample.read(tmp_path / "bad.json")
    with pytest.raises(LocoeditError, match="does not exist"):
        Sample.read(tmp_path / "none.json")


def test_unions_take_the_first_type_that_fits():
    assert from_plain(int | str, "auto", "w") == "auto" and from_plain(int | str, 3, "w") == 3
    with pytest.raises(LocoeditError, match="w should be text"):
        from_plain(int | str, 2.5, "w")


def test_every_result_the_project_writes_reads_back(tmp_path, tiny_adapters):
    """localization.json, request.json, the window progress files and evaluation.json, through their readers."""
    from locoedit.localize import LocalizationRequest, LocalizationResult, WindowResult, localize
    from locoedit.scoring import PixelScorer

    adapter = tiny_adapters["sd"]
    request = LocalizationRequest(
        model="tiny", prompts=("a house in the style of van gogh",), targets=("a house",), window=3, seeds=(0,), steps=2
    )
    result = localize(request, tmp_path, adapter, PixelScorer())
    for file in [tmp_path / "localization.json", tmp_path / "request.json", *(tmp_path / "progress").glob("*.json")]:
        assert json.loads(file.read_text())["format"].startswith("locoedit.")
    assert LocalizationResult.load(tmp_path) == result
    assert LocalizationRequest.read(tmp_path / "request.json") == result.request
    assert result.request.scorer == "pixel"  # the scorer used is recorded, not left as the default None
    first = result.windows[0]
    assert WindowResult.read(tmp_path / "progress" / f"{first.key}.json") == first


def test_json_files_are_written_with_shared_permissions_and_never_hold_nan(tmp_path):
    import os
    import stat

    from locoedit.core.io import write_json

    old = os.umask(0o022)
    try:
        path = SAMPLE.write(tmp_path / "sample.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not tempfile's private 0600
    with pytest.raises(ValueError, match="non-finite number"):
        write_json(tmp_path / "nan.json", {"effect": float("nan")})
    assert not (tmp_path / "nan.json").exists() and not list(tmp_path.glob(".nan.json*"))
