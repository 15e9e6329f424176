"""The Python API checks types as the command line does: wrong types get a LocoeditError, never a raw TypeError."""

import pytest

from locoedit.core.errors import LocoeditError
from locoedit.edit import EditRequest
from locoedit.edit.neurons import NeuronRequest
from locoedit.evaluate import EvaluationRequest
from locoedit.localize import LocalizationRequest
from locoedit.trace import TraceRequest
from locoedit.workflows.requests import GenerationRequest

BASE = {
    LocalizationRequest: dict(model="toyworld", prompts=("a red circle",), targets=("a circle",)),
    TraceRequest: dict(model="toyworld", prompts=("a red circle",), concept="red"),
    GenerationRequest: dict(model="toyworld", prompts=("a red circle",)),
    EvaluationRequest: dict(model="toyworld", edit="d.safetensors"),
    EditRequest: dict(model="toyworld", concepts=("circle",), targets=("square",), layers=(2,)),
    NeuronRequest: dict(model="toyworld", concepts=("circle",), targets=("square",), layers=(2,)),
}
WRONG = [
    ("seeds", None),
    ("seeds", ("a",)),
    ("seeds", (-1,)),
    ("seeds", (0.5,)),
    ("steps", "4"),
    ("steps", 2.5),
    ("steps", True),
    ("guidance", float("nan")),
    ("guidance", "high"),
    ("dtype", "float8"),
]


def cases():
    for cls, base in BASE.items():
        names = {f for f in cls.__dataclass_fields__}
        for field, value in WRONG:
            if field == "seeds" and cls in (EditRequest, NeuronRequest):
                field = "auto_seeds"
            if field == "steps" and cls in (EditRequest, NeuronRequest):
                field = "auto_steps"
            if field in names:
                yield pytest.param(cls, base, field, value, id=f"{cls.__name__}-{field}-{value!r}")


@pytest.mark.parametrize("cls, base, field, value", list(cases()))
def test_wrong_types_are_named(cls, base, field, value):
    with pytest.raises(LocoeditError) as error:
        cls(**{**base, field: value})
    assert "\n" not in str(error.value)
