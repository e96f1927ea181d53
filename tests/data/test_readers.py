"""data/readers.py: the native format, detection of a file's format, validation errors named by line."""

import gzip
import json

import pytest
from conftest import write_jsonl
from samples import CONVERSATIONAL, IMPLICIT_MESSAGES, PAIRWISE, SCORED, UF_BINARIZED, ULTRAFEEDBACK, read

from rankrm.data.groups import ReadReport
from rankrm.data.readers import detect_format, read_groups
from rankrm.data.splits import write_native
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


def test_native_pairs_and_margins_round_trip(tmp_path):
    g, _ = read(write_jsonl(tmp_path / "p.jsonl", PAIRWISE))
    write_native(g, tmp_path / "n.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "n.jsonl").read_text().splitlines()]
    assert rows[0]["pairs"] == [[0, 1], [1, 2]] and rows[0]["margins"] == [2.0, 0.5] and "pairs" not in rows[1]
    back, _ = read(tmp_path / "n.jsonl")
    assert back[0].stated_pairs == g[0].stated_pairs and back[0].margins == g[0].margins
    assert back[1].comparisons() == [(0, 1)]


def test_native_pairs_must_be_acyclic_and_agree_with_ranks(tmp_path):
    base = {"prompt": "p", "completions": ["a", "b", "c"]}
    f = write_jsonl(tmp_path / "n.jsonl", [{**base, "pairs": [[0, 1], [1, 0]]}])
    with pytest.raises(DataError, match=r"n.jsonl:1: field 'pairs': contradictory comparisons"):
        read_groups(f, conflicts="error")
    f = write_jsonl(tmp_path / "n.jsonl", [{**base, "ranks": [0, 1, 2], "pairs": [[2, 1]]}])
    with pytest.raises(DataError, match=r"n.jsonl:1: field 'pairs\[0\]': says completion 2 beats 1"):
        read_groups(f)


@pytest.mark.parametrize(
    "rows, fmt",
    [
        (PAIRWISE, "pairwise"),
        (CONVERSATIONAL, "pairwise"),
        (UF_BINARIZED, "pairwise"),
        (IMPLICIT_MESSAGES, "implicit"),
        (SCORED, "scored"),
        (ULTRAFEEDBACK, "scored"),
        ([{"prompt": "p", "completions": ["a", "b"]}], "native"),
    ],
)
def test_detection_from_fields(tmp_path, rows, fmt):
    assert detect_format(write_jsonl(tmp_path / "d.jsonl", rows)) == fmt


def test_detection_of_an_unknown_record_says_how_to_choose(tmp_path):
    with pytest.raises(
        DataError,
        match=r"d.jsonl:1: unrecognised record with fields \['answer', 'question'\]"
        r".*--format",
    ):
        read_groups(write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}]))
