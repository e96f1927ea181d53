"""Margins from the file to the batch: read (pairwise `margin`, native `margins`), checked (file, line, field),
written back by `rankrm data convert`, and laid out as the batch's (N, N) pair_margins."""

import json
import math

import pytest
from conftest import write_jsonl

from rankrm.data.convert import convert_data
from rankrm.data.encode import TokenizedGroup, shuffled_pairs
from rankrm.data.readers import read_groups
from rankrm.errors import DataError
from rankrm.modeling.batch import collate

NATIVE = {"prompt": "Colour?", "completions": ["blue", "green", "red"], "ranks": [0, 1, 2], "margins": [2, 0.5, 1]}


def test_native_margins_follow_the_ranks_pairs_and_convert_both_ways(tmp_path):
    """Ranks (0, 1, 2) state (0,1), (0,2), (1,2) in that order, with margins 2, 0.5, 1. To pairwise: one record per
    comparison with its margin; read back and converted to native: the same margins."""
    f = write_jsonl(tmp_path / "n.jsonl", [NATIVE])
    (g,) = read_groups(f)
    assert g.comparisons() == [(0, 1), (0, 2), (1, 2)] and g.margins == (2.0, 0.5, 1.0)
    convert_data(f, tmp_path / "p.jsonl", "pairwise")
    rows = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [(r["chosen"], r["rejected"], r["margin"]) for r in rows] == [
        ("blue", "green", 2.0),
        ("blue", "red", 0.5),
        ("green", "red", 1.0),
    ]
    convert_data(tmp_path / "p.jsonl", tmp_path / "back.jsonl", "native")
    (back,) = [json.loads(x) for x in (tmp_path / "back.jsonl").read_text().splitlines()]
    assert back["ranks"] == [0, 1, 2] and back["margins"] == [2.0, 0.5, 1.0]


@pytest.mark.parametrize(
    "margins, says",
    [
        (["big", 0.5, 1], r"n.jsonl:1: field 'margins\[0\]': expected a number, got str"),
        ([1, math.nan, 1], r"n.jsonl:1: field 'margins\[1\]': is nan"),
        ([1, 2], r"n.jsonl:1: field 'margins': expected a list of 3 numbers, one per comparison"),
    ],
)
def test_bad_native_margins_name_the_file_line_and_field(tmp_path, margins, says):
    f = tmp_path / "n.jsonl"
    f.write_text(json.dumps({**NATIVE, "margins": margins}) + "\n")  # json writes NaN as NaN, which Python reads
    with pytest.raises(DataError, match=says):
        read_groups(f)


def test_batch_margins_sit_at_winner_loser_and_shuffled_pairs_keep_theirs():
    """Two groups: ranks (0, 1, 2) with margins (2, 0.5, 1) and a K = 2 group without margins (0 in the matrix)."""
    a = TokenizedGroup([[5, 1], [5, 2], [5, 3]], [0, 1, 2], margins=[2.0, 0.5, 1.0])
    b = TokenizedGroup([[6, 1], [6, 2]], [1, 0])
    m = collate([a, b], 0).pair_margins
    assert m[0, 1] == 2.0 and m[0, 2] == 0.5 and m[1, 2] == 1.0 and m.sum() == 3.5
    assert collate([b], 0).pair_margins is None
    assert [p.margins for p in shuffled_pairs([a])] == [[2.0], [0.5], [1.0]]
