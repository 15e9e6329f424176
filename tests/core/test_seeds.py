import pytest

from locoedit.core.errors import LocoeditError
from locoedit.core.seeds import MAX_SEED, check_seeds, parse_seeds


def test_lists_ranges_and_mixes():
    assert parse_seeds("0,1,2,3") == (0, 1, 2, 3)
    assert parse_seeds("0-3,10") == (0, 1, 2, 3, 10)
    assert parse_seeds(" 7 ") == (7,)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "is empty"),
        (",", "is empty"),
        ("x", "'x' is not a non-negative integer"),
        ("-1", "is not a non-negative integer or a range"),
        ("5-2", "runs backwards; write it low-high, e.g. 2-5"),
        ("0,0,1", "repeats [0]"),
        ("0-3,2", "repeats [2]"),
        (str(MAX_SEED + 1), "seeds must be between 0 and"),
    ],
)
def test_bad_seeds_are_named(text, message):
    with pytest.raises(LocoeditError) as error:
        parse_seeds(text)
    assert message in str(error.value)


@pytest.mark.parametrize("value", [None, "0", (0.5,), (True,), ("a",)])
def test_python_values_are_checked_like_text(value):
    with pytest.raises(LocoeditError):
        check_seeds(value)
