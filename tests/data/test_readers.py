"""Reading ranked groups: the native format, the OpenAssistant exports, validation errors, splitting by prompt."""

import gzip
import json

import pytest
from conftest import OASST_FLAT, OASST_TREES, write_jsonl

from rankrm.data.groups import ReadReport
from rankrm.data.judgments import depth_ranks, find_cycle
from rankrm.data.readers import read_groups
from rankrm.data.splits import overlap, split_by_prompt, write_native
from rankrm.errors import DataError

GOOD = {"prompt": "Say hi", "completions": ["Hi!", "Hello there.", "Go away."], "ranks": [0, 0, 1]}


def test_native_reads_ranks_ties_and_default_order(tmp_path):
    msgs = [{"role": "user", "content": "Hi"}]
    f = write_jsonl(tmp_path / "d.jsonl", [GOOD, "", {"prompt": msgs, "completions": ["a", "b"]}])
    g = read_groups(f)
    assert [x.ranks for x in g] == [(0, 0, 1), (0, 1)]
    assert g[0].comparisons() == [(0, 2), (1, 2)]  # the tie between completions 0 and 1 is no comparison
    assert g[1].prompt == msgs and g[1].source.endswith("d.jsonl:3")


def test_gzip_is_read(tmp_path):
    f = tmp_path / "d.jsonl.gz"
    with gzip.open(f, "wt") as h:
        h.write(json.dumps(GOOD) + "\n")
    assert len(read_groups(f)) == 1


def test_all_tied_groups_are_skipped_and_counted(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [GOOD, {**GOOD, "ranks": [1, 1, 1]}])
    report = ReadReport()
    assert len(read_groups(f, report=report)) == 1
    assert report.skipped == {"all completions tied: no comparison": 1}


@pytest.mark.parametrize(
    "record, field, words",
    [
        ('{"prompt": "x", "completions": ["a", "b"]', None, "malformed JSON"),
        ({"completions": ["a", "b"]}, "prompt", "missing"),
        ({"prompt": "", "completions": ["a", "b"]}, "prompt", "empty"),
        ({"prompt": 3, "completions": ["a", "b"]}, "prompt", "expected a string or a list"),
        ({"prompt": [{"role": "robot", "content": "x"}], "completions": ["a", "b"]}, "prompt[0].role", "unknown role"),
        ({"prompt": "x", "completions": ["a"]}, "completions", "at least 2"),
        ({"prompt": "x", "completions": "ab"}, "completions", "expected a list"),
        ({"prompt": "x", "completions": ["a", " "]}, "completions[1]", "empty"),
        ({"prompt": "x", "completions": ["a", "a"]}, "completions[1]", "duplicates completions[0]"),
        ({"prompt": "x", "completions": ["a", "b"], "ranks": [0]}, "ranks", "1 ranks for 2 completions"),
        ({"prompt": "x", "completions": ["a", "b"], "ranks": [0, 1.5]}, "ranks[1]", "non-negative integer"),
        ({"prompt": "x", "completions": ["a", "b"], "ranks": [0, -1]}, "ranks[1]", "non-negative integer"),
    ],
)
def test_bad_records_name_file_line_field_and_fix(tmp_path, record, field, words):
    f = write_jsonl(tmp_path / "bad.jsonl", [GOOD, record])
    with pytest.raises(DataError) as e:
        read_groups(f)
    msg = str(e.value)
    assert "bad.jsonl:2:" in msg and words in msg and "Fix:" in msg
    if field:
        assert f"field '{field}'" in msg


def test_non_utf8_bytes_name_the_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_bytes((json.dumps(GOOD) + "\n").encode() + b'{"prompt": "caf\xe9", "completions": ["a", "b"]}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid UTF-8.*Fix: re-encode"):
        read_groups(f)


def test_find_cycle_reads_a_cycle_from_its_lowest_index_in_the_winners_direction():
    """1 > 2 > 0 > 1 is one 3-cycle whichever pair comes first, read from completion 0; 0 > 1 with 1 > 0 is a
    2-cycle; a cycle among 2, 3, 4 next to an order on 0, 1 starts at 2. A diamond 0 > {1, 2} > 3 > 4 has no
    cycle, and each completion's rank is its longest chain of winners (0 > 4 directly does not lift 4)."""
    assert find_cycle([(1, 2), (2, 0), (0, 1)]) == [0, 1, 2, 0]
    assert find_cycle([(2, 0), (0, 1), (1, 2)]) == [0, 1, 2, 0]
    assert find_cycle([(1, 0), (0, 1)]) == [0, 1, 0]
    assert find_cycle([(0, 1), (3, 4), (4, 2), (2, 3)]) == [2, 3, 4, 2]
    diamond = [(0, 1), (0, 2), (1, 3), (2, 3), (3, 4), (0, 4)]
    assert find_cycle(diamond) is None
    assert depth_ranks(6, diamond) == (0, 1, 1, 2, 3, 0)


def test_cyclic_and_contradictory_labels_name_their_lines(tmp_path):
    """Records a > b (line 2), b > c (line 3), c > a (line 5) of one prompt make a 3-cycle: "cyclic", naming the
    three lines, raised at the last; b > a (line 3) after a > b (line 1) is a 2-cycle: "contradictory". In the
    native format the stated pairs' cycle names the completions. (With --conflicts error; keep is the default.)"""

    def rec(prompt, chosen, rejected):
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}

    f = write_jsonl(
        tmp_path / "c.jsonl",
        [rec("q", "x", "y"), rec("p", "a", "b"), rec("p", "b", "c"), rec("r", "x", "y"), rec("p", "c", "a")],
    )
    with pytest.raises(
        DataError,
        match=r"^\S*c.jsonl:5: field 'chosen': cyclic labels for one prompt "
        r"\(line 2, line 3, line 5\): 'a' > 'b' > 'c' > 'a'\. Fix: ",
    ):
        read_groups(f, conflicts="error")
    f = write_jsonl(tmp_path / "t.jsonl", [rec("p", "a", "b"), rec("q", "x", "y"), rec("p", "b", "a")])
    with pytest.raises(
        DataError,
        match=r"^\S*t.jsonl:3: field 'chosen': contradictory labels for one prompt "
        r"\(line 1, line 3\): 'a' > 'b' > 'a'\. Fix: ",
    ):
        read_groups(f, conflicts="error")
    f = write_jsonl(
        tmp_path / "n.jsonl", [GOOD, {"prompt": "p", "completions": ["a", "b", "c"], "pairs": [[1, 2], [2, 0], [0, 1]]}]
    )
    with pytest.raises(
        DataError,
        match=r"n.jsonl:2: field 'pairs': cyclic comparisons: "
        r"completion 0 > completion 1 > completion 2 > completion 0\. Fix: ",
    ):
        read_groups(f, conflicts="error")


def test_oasst_nested_trees_match_sources_counts():
    """SOURCES.md: 212 ranked sibling groups, K=2: 57, K=3: 117, K=4: 27, K=5: 3, K=6: 6, K=8: 1, K=9: 1;
    every one ranks assistant replies, and none contains a deleted message."""
    report = ReadReport()
    g = read_groups(OASST_TREES, report=report)
    ks = {}
    for x in g:
        ks[x.k] = ks.get(x.k, 0) + 1
    assert ks == {2: 57, 3: 117, 4: 27, 5: 3, 6: 6, 8: 1, 9: 1}
    assert all(x.prompt[-1]["role"] == "user" and x.prompt[0]["role"] == "user" for x in g)
    assert len({x.tree for x in g}) == 100


def test_oasst_flat_export_drops_deleted_and_reports_it():
    """SOURCES.md counts 416 groups after dropping deleted messages; one of them lists the same reply text
    twice, which a ranking cannot compare, so 415 are kept and the other is reported."""
    report = ReadReport()
    g = read_groups(OASST_FLAT, report=report)
    assert len(g) == 415
    assert report.skipped["groups with duplicate replies"] == 1
    assert report.skipped["deleted messages"] == 25
    # a multi-turn prompt alternates user and assistant and ends with the user
    deep = max(g, key=lambda x: len(x.prompt))
    roles = [m["role"] for m in deep.prompt]
    assert roles[-1] == "user" and all(a != b for a, b in zip(roles, roles[1:]))


def test_two_oasst_files_share_groups_that_are_read_once():
    report = ReadReport()
    g = read_groups([OASST_TREES, OASST_FLAT], report=report)
    dupes = report.skipped["duplicate groups (same prompt and completions in an earlier record or file)"]
    assert dupes > 0 and len(g) == 212 + 415 - dupes


def test_split_by_prompt_never_puts_a_tree_on_both_sides():
    g = read_groups([OASST_TREES, OASST_FLAT])
    train, held = split_by_prompt(g, 0.2, seed=3)
    assert len(train) + len(held) == len(g)
    assert overlap(train, held) == 0
    assert not {x.tree for x in train} & {x.tree for x in held}
    assert split_by_prompt(g, 0.2, seed=3)[1] == held  # seeded
    assert split_by_prompt(g, 0.2, seed=4)[1] != held


def test_write_native_round_trips(tmp_path):
    g = read_groups(OASST_TREES)[:20]
    write_native(g, tmp_path / "n.jsonl")
    back = read_groups(tmp_path / "n.jsonl")
    assert [(x.prompt, x.completions, x.ranks) for x in back] == [(x.prompt, x.completions, x.ranks) for x in g]
