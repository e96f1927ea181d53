"""data/validate.py: each field of a record checked, the error naming file, line, field (with its index) and fix."""

import math

import pytest

from rankrm.data.validate import check_counts, check_number, check_pairs, check_prompt, check_ranks, check_subset
from rankrm.errors import DataError


def test_good_values_come_back_in_the_groups_types():
    assert check_ranks([1, 0, 1], 3, "f", 1) == (1, 0, 1)
    assert check_ranks([0, 2], 2, "f", 1) == (0, 2)  # an order: gaps between ranks are allowed
    assert check_pairs([[0, 1], [2, 1]], 3, "f", 1) == ((0, 1), (2, 1))
    assert check_counts([2, 1], 2, "f", 1) == (2, 1)
    assert check_number(2, "f", 1, "margin") == 2.0 and type(check_number(2, "f", 1, "margin")) is float
    assert check_subset(None, "f", 1) is None and check_subset("chat", "f", 1) == "chat"
    assert check_prompt([{"role": "user", "content": "x"}], "f", 1) == [{"role": "user", "content": "x"}]


@pytest.mark.parametrize(
    "check, says",
    [
        (
            lambda: check_ranks([0], 2, "f.jsonl", 3),
            "f.jsonl:3: field 'ranks': has 1 ranks for 2 completions. Fix: give exactly one rank per completion",
        ),
        (
            lambda: check_ranks([0, True], 2, "f.jsonl", 3),
            "f.jsonl:3: field 'ranks[1]': expected a non-negative integer, got True. Fix: use integer ranks, 0 = "
            "best, equal ranks for ties",
        ),
        (
            lambda: check_pairs([[1, 1]], 2, "f.jsonl", 4),
            "f.jsonl:4: field 'pairs[0]': expected two different indices below 2, got [1, 1]. Fix: give "
            "comparisons as [[winner, loser], ...], indices into completions",
        ),
        (
            lambda: check_pairs([[0, 1], [0, 2]], 2, "f.jsonl", 4),
            "f.jsonl:4: field 'pairs[1]': expected two different indices below 2, got [0, 2]. Fix: give "
            "comparisons as [[winner, loser], ...], indices into completions",
        ),
        (
            lambda: check_counts([1, 0], 2, "f.jsonl", 5),
            "f.jsonl:5: field 'counts[1]': expected a positive integer, got 0. Fix: count each stated comparison "
            "(1 or more votes)",
        ),
        (
            lambda: check_counts([1], 2, "f.jsonl", 5),
            "f.jsonl:5: field 'counts': expected a list of 2 positive integers, one per pair. Fix: give how many "
            "times each pair of pairs was stated, in the same order",
        ),
        (
            lambda: check_number(math.inf, "f.jsonl", 6, "margin"),
            "f.jsonl:6: field 'margin': is inf. Fix: give a finite number (fix or drop the record)",
        ),
        (
            lambda: check_number("1", "f.jsonl", 6, "margin"),
            "f.jsonl:6: field 'margin': expected a number, got str. Fix: write a number",
        ),
        (
            lambda: check_prompt(5, "f.jsonl", 7),
            "f.jsonl:7: field 'prompt': expected a string or a list of messages, got int. Fix: give the prompt text "
            "or a list of messages",
        ),
        (
            lambda: check_prompt([{"role": "bot", "content": "x"}], "f.jsonl", 7),
            "f.jsonl:7: field 'prompt[0].role': unknown role 'bot'. Fix: use one of system, user, assistant, tool",
        ),
        (
            lambda: check_subset(3, "f.jsonl", 8),
            "f.jsonl:8: field 'subset': expected a string, got int. Fix: name the subset as text, or leave the "
            "field out",
        ),
    ],
)
def test_a_bad_value_names_file_line_field_and_fix(check, says):
    with pytest.raises(DataError) as e:
        check()
    assert str(e.value) == says
