"""data/comparisons.py: a prompt's comparisons merged into one group; contradictions and cycles named by line."""

from __future__ import annotations

import pytest
from conftest import write_jsonl
from samples import PAIRWISE, _pairwise_far_apart, read

from rankrm.data.comparisons import merge_comparisons
from rankrm.data.groups import ReadReport
from rankrm.data.readers import read_groups
from rankrm.errors import DataError


def test_contradictory_labels_name_both_lines(tmp_path):
    rows = [PAIRWISE[0], PAIRWISE[1], {"prompt": "The sky is", "chosen": " green.", "rejected": " blue."}]
    f = write_jsonl(tmp_path / "p.jsonl", [{k: v for k, v in r.items() if k != "margin"} for r in rows])
    with pytest.raises(DataError) as e:
        read_groups(f, conflicts="error")
    msg = str(e.value)
    assert "p.jsonl:3: field 'chosen': contradictory labels" in msg and "line 1" in msg and "Fix:" in msg


def test_cyclic_labels_are_reported_and_skipped_with_skip_invalid(tmp_path):
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "q", "chosen": "x", "rejected": "y"},
        {"prompt": "p", "chosen": "b", "rejected": "c"},
        {"prompt": "p", "chosen": "c", "rejected": "a"},
    ]
    f = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(
        DataError,
        match=r"p.jsonl:4: field 'chosen': cyclic labels .*line 1, line 3, line 4.*"
        r"'a' > 'b' > 'c' > 'a'",
    ):
        read_groups(f, conflicts="error")
    g, report = read(f, skip_invalid=True, conflicts="error")
    assert [x.prompt for x in g] == ["q"]
    assert report.skipped == {"invalid: cyclic comparisons (records)": 3}


def test_stream_merge_matches_merging_all_records_at_once(tmp_path):
    """Records of one prompt far apart in the file: the two-pass merge gives the groups (and order) of merging all
    records in memory."""
    from rankrm.data.pairwise import _pairwise_comparisons

    path = _pairwise_far_apart(tmp_path / "p.jsonl")
    report = ReadReport()
    streamed = read_groups([path], report=report)
    comps = [c for cs in _pairwise_comparisons(path, ReadReport(), False) for c in cs]
    at_once = merge_comparisons(comps, path, ReadReport(), False)
    assert streamed == at_once
    assert len(streamed) == 10 and report.groups == 10 and report.records == 32
    assert next(g for g in streamed if g.prompt == "question 3").counts is not None
