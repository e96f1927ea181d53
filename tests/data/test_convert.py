"""data/convert.py: groups written as TRL pairwise records (one per stated comparison) or native JSONL, whole or
not at all."""

import json

import pytest
from conftest import write_jsonl

from rankrm.data.convert import convert_data, pairwise_records
from rankrm.data.groups import RankedGroup
from rankrm.errors import DataError, SettingsError

SKY = [{"role": "user", "content": "Sky?"}]


def test_each_comparison_is_a_record_with_its_margin_votes_and_subset():
    """Stated pairs 0 > 1 (twice) and 1 > 2 with margins 2.0 and 0.5: two records, the first with "votes": 2; a
    conversation's replies become assistant messages; a tie states nothing and writes nothing."""
    text = RankedGroup(
        "p", ("a", "b", "c"), (0, 1, 2), stated_pairs=((0, 1), (1, 2)), counts=(2, 1), margins=(2.0, 0.5), subset="s"
    )
    convo = RankedGroup(SKY, ("Blue.", "Green."), (0, 1))
    tie = RankedGroup("t", ("x", "y"), (0, 0))
    assert list(pairwise_records([text, convo, tie])) == [
        {"prompt": "p", "chosen": "a", "rejected": "b", "margin": 2.0, "votes": 2, "subset": "s"},
        {"prompt": "p", "chosen": "b", "rejected": "c", "margin": 0.5, "subset": "s"},
        {
            "prompt": SKY,
            "chosen": [{"role": "assistant", "content": "Blue."}],
            "rejected": [{"role": "assistant", "content": "Green."}],
        },
    ]


def test_convert_counts_what_it_wrote_and_writes_nothing_on_bad_input(tmp_path):
    """A native group of K = 3 ranked a > b > c is 3 pairwise records, and 1 native record."""
    src = write_jsonl(tmp_path / "n.jsonl", [{"prompt": "p", "completions": ["a", "b", "c"], "ranks": [0, 1, 2]}])
    report, n = convert_data(src, tmp_path / "p.jsonl", "pairwise")
    assert n == 3 and report.groups == 1
    assert [json.loads(x)["rejected"] for x in (tmp_path / "p.jsonl").read_text().splitlines()] == ["b", "c", "c"]
    assert convert_data(tmp_path / "p.jsonl", tmp_path / "back.jsonl", "native")[1] == 1
    with pytest.raises(SettingsError, match=r"--to: unknown target format 'csv'. Fix: use one of native, pairwise"):
        convert_data(src, tmp_path / "x.jsonl", "csv")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "completions": ["a", "b"], "ranks": [0, 1]}, "{"])
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        convert_data(bad, tmp_path / "out.jsonl", "native")
    assert not (tmp_path / "out.jsonl").exists()
