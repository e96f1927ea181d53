"""data/oasst.py: OpenAssistant's nested trees and flat exports as ranked sibling groups."""

import json

import pytest
from conftest import OASST_FLAT, OASST_TREES

from rankrm.data.groups import ReadReport
from rankrm.data.readers import read_groups
from rankrm.errors import DataError


@pytest.mark.parametrize("parent", [[], {}, 0, ["m1"]])
def test_oasst_flat_parent_id_of_the_wrong_type_is_a_data_error(tmp_path, parent):
    """Found by the property test: an empty list as parent_id passed the check (it is falsy) and crashed later."""
    f = tmp_path / "flat.jsonl"
    f.write_text(
        json.dumps({"message_id": "m1", "parent_id": None, "message_tree_id": "t", "text": "hi", "role": "prompter"})
        + "\n"
        + json.dumps(
            {
                "message_id": "m2",
                "parent_id": parent,
                "message_tree_id": "t",
                "text": "a",
                "role": "assistant",
                "rank": 0,
            }
        )
        + "\n"
    )
    with pytest.raises(DataError) as e:
        read_groups(f, "oasst")
    assert "flat.jsonl:2" in str(e.value) and "parent_id" in str(e.value) and "Fix:" in str(e.value)


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
