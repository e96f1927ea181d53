"""data/groups.py: what a ranked group states (comparisons, votes), its identity keys, its native record, and the
read report's counts."""

import dataclasses
from collections import Counter

import pytest

from rankrm.data.groups import RankedGroup, ReadReport, comparisons, prompt_key, votes
from rankrm.errors import DataError


def test_ranks_state_every_ordered_pair_and_ties_state_none():
    """Ranks (1, 0, 1): completion 1 beats 0 and 2, which tie. Stated pairs replace the ranks' pairs."""
    assert comparisons((1, 0, 1)) == [(1, 0), (1, 2)]
    assert comparisons((0, 1, 2)) == [(0, 1), (0, 2), (1, 2)]
    assert comparisons((0, 0)) == []
    assert comparisons((0, 1, 2), stated_pairs=((1, 2),)) == [(1, 2)]
    assert votes((0, 1, 2)) == [1, 1, 1] and votes((0, 1, 2), ((0, 1), (1, 2)), (3, 1)) == [3, 1]


def test_a_prompt_key_tells_text_from_messages_and_ignores_key_order():
    assert prompt_key("p") != prompt_key([{"role": "user", "content": "p"}])
    assert prompt_key([{"content": "p", "role": "user"}]) == prompt_key([{"role": "user", "content": "p"}])


def test_split_key_is_the_tree_else_the_first_message():
    assert RankedGroup("p", ("a", "b"), (0, 1), tree="t7").split_key == "tree:t7"
    convo = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "."}, {"role": "user", "content": "?"}]
    assert RankedGroup(convo, ("a", "b"), (0, 1)).split_key == "prompt:hi"
    assert RankedGroup("hi", ("a", "b"), (0, 1)).split_key == "prompt:hi"


def test_the_native_record_holds_only_the_fields_a_group_has():
    assert RankedGroup("p", ("a", "b"), (0, 1), source="f:1").to_json() == {
        "prompt": "p",
        "completions": ["a", "b"],
        "ranks": [0, 1],
    }
    g = RankedGroup("p", ("a", "b", "c"), (0, 1, 2), tree="t", stated_pairs=((0, 1), (1, 2)), margins=(1.0, 0.5))
    g = dataclasses.replace(g, counts=(2, 1), subset="chat", fields={"judge": ("x", "y")})
    assert g.to_json() == {
        "prompt": "p",
        "completions": ["a", "b", "c"],
        "ranks": [0, 1, 2],
        "pairs": [[0, 1], [1, 2]],
        "counts": [2, 1],
        "margins": [1.0, 0.5],
        "subset": "chat",
        "fields": {"judge": ["x", "y"]},
        "tree": "t",
    }
    assert g.k == 3 and g.votes() == [2, 1]


def test_the_report_adds_up_and_counts_what_it_skips_by_reason():
    a = ReadReport(groups=3, records=5, skipped=Counter({"b": 1, "a": 2}), notes=Counter({"n": 4}))
    a.merge(ReadReport(groups=1, records=2, skipped=Counter({"a": 1})))
    assert (a.groups, a.records, a.skipped, a.notes) == (4, 7, {"a": 3, "b": 1}, {"n": 4})
    assert a.summary() == "4 groups, skipped 3 (a), skipped 1 (b), 4 n"
    bad = DataError("f.jsonl", 2, "ranks[1]", "expected an integer", "use integers")
    a.skip(bad, skip_invalid=True)
    assert a.skipped["invalid: ranks[]: expected an integer"] == 1
    with pytest.raises(DataError, match=r"f.jsonl:2: field 'ranks\[1\]': expected an integer. Fix: use integers"):
        a.skip(bad, skip_invalid=False)
