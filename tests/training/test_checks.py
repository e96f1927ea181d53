"""training/checks.py: a setting's value read as its field's type, and the one-line message when it cannot be."""

import pytest

from rankrm.errors import SettingsError
from rankrm.training.checks import coerce, flag


def test_values_written_as_text_are_read_as_their_settings_type():
    assert coerce("train_data", "a.jsonl", list[str], "c.yaml") == ["a.jsonl"]  # one path: a list of one
    assert coerce("train_data", ("a", "b"), list[str], "c.yaml") == ["a", "b"]
    assert [coerce("bf16", v, bool, "c.yaml") for v in ("Yes", "true", "1", "no", "FALSE", "0", True)] == [
        True,
        True,
        True,
        False,
        False,
        False,
        True,
    ]
    assert coerce("learning_rate", " 3e-4 ", float, "c.yaml") == 0.0003
    assert coerce("batch_size", "8", int, "c.yaml") == 8 and coerce("batch_size", 8.0, int, "c.yaml") == 8
    assert type(coerce("epochs", 2, float, "c.yaml")) is float and flag("learning_rate") == "--learning-rate"


@pytest.mark.parametrize(
    "name, value, tp, expected",
    [
        ("batch_size", 8.5, int, "an integer"),
        ("batch_size", "eight", int, "an integer"),
        ("batch_size", True, int, "a number"),  # a bool is not 1
        ("learning_rate", "fast", float, "a number"),
        ("bf16", 1, bool, "true or false"),
        ("train_data", [1], list[str], "a list of strings"),
        ("model", 3, str, "a string"),
    ],
)
def test_a_value_of_the_wrong_type_names_where_the_setting_and_the_fix(name, value, tp, expected):
    says = (
        f"c.yaml: setting {name.replace('_', '-')!r}: expected {expected}, got {value!r}. Fix: write {expected} "
        "(see rankrm train --help)"
    )
    with pytest.raises(SettingsError) as e:
        coerce(name, value, tp, "c.yaml")
    assert str(e.value) == says
