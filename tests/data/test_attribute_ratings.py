"""Rated attributes read from every layout that carries them (native, rated single completions and HelpSteer2's
columns, UltraFeedback's annotations, OpenAssistant's labels), their errors naming the field, and the store keeping
them per completion with the missing ones masked."""

from __future__ import annotations

import json

import pytest
from conftest import SHIPPED, write_jsonl

from rankrm.data.encode import TextEncoder
from rankrm.data.groups import ReadReport
from rankrm.data.prepare import prepare
from rankrm.data.readers import detect_format, read_groups
from rankrm.errors import DataError

OASST = SHIPPED / "oasst1_en_validation.jsonl"


def read(path, **kw):
    report = ReadReport()
    return read_groups([path], report=report, **kw), report


def test_native_attributes_round_trip_with_a_missing_rating(tmp_path):
    """One rating missing (null) stays missing (absent from that completion's ratings), not 0."""
    rec = {"prompt": "p", "completions": ["a", "b"], "ranks": [0, 1], "attributes": [{"x": 3, "y": None}, {"y": 1}]}
    (g,), report = read(write_jsonl(tmp_path / "n.jsonl", [rec]))
    assert g.attributes == ({"x": 3.0}, {"y": 1.0})
    assert report.notes["completions with rated attributes"] == 2
    (again,), _ = read(write_jsonl(tmp_path / "again.jsonl", [g.to_json()]))
    assert again.to_json() == g.to_json() == {**rec, "attributes": [{"x": 3.0}, {"y": 1.0}]}


def test_rated_single_completions_and_helpsteer2_columns(tmp_path):
    rows = [
        {"prompt": "p1", "completion": "c1", "scores": {"helpfulness": 4, "verbosity": 1.5}},
        {"prompt": "p2", "response": "c2", "helpfulness": 3, "correctness": 2, "coherence": 4, "complexity": 1,
         "verbosity": 0},
        {"prompt": "p3", "response": "c3", "scores": {}},  # no rating: left out, counted
    ]  # fmt: skip
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    assert detect_format(path) == "rated"
    (a, b), report = read(path)
    assert (
        a.completions == ("c1",) and a.comparisons() == [] and a.attributes == ({"helpfulness": 4.0, "verbosity": 1.5},)
    )
    assert b.attributes == ({"helpfulness": 3.0, "correctness": 2.0, "coherence": 4.0, "complexity": 1.0,
                             "verbosity": 0.0},)  # fmt: skip
    assert report.skipped["rated records without any rating"] == 1 and report.groups == 2


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"prompt": "p", "completion": "c", "scores": {"helpfulness": "high"}}, "scores.helpfulness"),
        ({"prompt": "p", "response": "c", "helpfulness": True}, "helpfulness"),
        ({"prompt": "p", "completions": ["a", "b"], "attributes": [{"x": 1}, {"x": "2"}]}, "attributes[1].x"),
        ({"prompt": "p", "completions": ["a", "b"], "attributes": [{"x": 1}]}, "attributes"),
        ({"prompt": "p", "completion": "c", "scores": [1, 2]}, "scores"),
    ],
)
def test_a_rating_that_is_not_a_number_names_its_field(tmp_path, row, field):
    path = write_jsonl(tmp_path / "bad.jsonl", [row])
    with pytest.raises(DataError) as e:
        read(path)
    assert e.value.field == field and e.value.line == 1
    _, report = read(path, skip_invalid=True)  # or counted and skipped
    assert sum(report.skipped.values()) == 1


def ultrafeedback(ratings):
    return {
        "instruction": "q",
        "completions": [
            {"response": f"r{i}", "fine-grained_score": 3.0 + i, "annotations": {
                "helpfulness": {"Rating": h, "Rationale": "..."}, "honesty": {"Rating": "N/A"}}}
            for i, h in enumerate(ratings)
        ],
    }  # fmt: skip


def test_ultrafeedback_annotations_as_attributes(tmp_path):
    """Ratings are numeric strings; "N/A" is a missing rating; the ranking still comes from the scores."""
    (g,), _ = read(write_jsonl(tmp_path / "uf.jsonl", [ultrafeedback(["4", "2"])]))
    assert g.attributes == ({"helpfulness": 4.0}, {"helpfulness": 2.0})
    assert g.ranks == (1, 0)
    with pytest.raises(DataError) as e:
        read(write_jsonl(tmp_path / "bad.jsonl", [ultrafeedback(["4", "four"])]))
    assert e.value.field == "completions[1].annotations.helpfulness.Rating"


def test_openassistant_labels_from_the_file_that_holds_the_rankings():
    """The shipped export: each ranked reply's labels are its ratings (quality, helpfulness, humor, ...), the mean
    of its annotators' values, read with the rankings; the first message's labels checked by hand."""
    groups, report = read(OASST)
    rated = sum(1 for g in groups for a in g.attributes or () if a)
    assert report.notes["completions with rated attributes"] == rated > 1000
    first_reply = next(json.loads(x) for x in OASST.open() if json.loads(x)["role"] == "assistant")
    labels = dict(zip(first_reply["labels"]["name"], first_reply["labels"]["value"]))
    g = next(g for g in groups if first_reply["text"] in g.completions)
    assert g.attributes[g.completions.index(first_reply["text"])] == pytest.approx(labels)
    assert {"quality", "helpfulness", "creativity", "humor", "toxicity"} <= set(labels)


def test_openassistant_label_with_no_annotator_is_missing_and_a_bad_value_skips_the_group(tmp_path):
    msgs = [
        {"message_id": "q", "parent_id": None, "message_tree_id": "t", "text": "Q?", "role": "prompter"},
        {"message_id": "a", "parent_id": "q", "message_tree_id": "t", "text": "A", "role": "assistant", "rank": 0,
         "labels": {"name": ["quality", "humor"], "value": [0.5, 0.0], "count": [2, 0]}},
        {"message_id": "b", "parent_id": "q", "message_tree_id": "t", "text": "B", "role": "assistant", "rank": 1},
    ]  # fmt: skip
    (g,), _ = read(write_jsonl(tmp_path / "o.jsonl", msgs))
    assert g.attributes == ({"quality": 0.5}, {})
    msgs[1]["labels"]["value"][0] = "good"
    groups, report = read(write_jsonl(tmp_path / "bad.jsonl", msgs))
    assert groups == [] and report.skipped["invalid group (expected a number, got str)"] == 1


def test_the_store_keeps_each_completions_ratings_and_counts_them(tmp_path, model_dirs):
    rows = [
        {"prompt": "p", "completions": ["a", "b"], "ranks": [0, 1], "attributes": [{"x": 3}, {"x": 1, "y": 2}]},
        {"prompt": "q", "completions": ["c", "d"], "ranks": [1, 0]},
        {"prompt": "r", "completion": "e", "scores": {"y": 0.5}},
    ]
    native = write_jsonl(tmp_path / "n.jsonl", rows[:2])
    rated = write_jsonl(tmp_path / "r.jsonl", rows[2:])
    enc = TextEncoder.from_pretrained(str(model_dirs["llama-chat"]), 64)
    store = prepare([native, rated], enc, tmp_path / "store")
    assert store.attributes == {"x": 2, "y": 2}
    view = store.view()
    assert view[0].attributes == {"x": [3.0, 1.0], "y": [None, 2.0]}  # the mask: None where not rated
    assert view[1].attributes is None
    assert view[2].attributes == {"y": [0.5]} and len(view[2].ids) == 1 and view[2].ranks == [0]
