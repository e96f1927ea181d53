"""data/dialogues.py: HH-RLHF dialogues and TRL's implicit-prompt conversations split into a prompt and two replies."""

import json

from conftest import write_jsonl
from samples import HH, IMPLICIT_MESSAGES, SKY, hh_lines, read

from rankrm.data.readers import detect_format


def test_hh_dialogues_split_at_the_last_shared_assistant_turn(tmp_path):
    f = tmp_path / "hh.jsonl"
    f.write_text("\n".join(hh_lines(1, 87, 1255)) + "\n")
    assert detect_format(f) == "implicit"
    (first, empty, parted), report = read(f)
    raw = json.loads(hh_lines(1)[0])
    assert [m["role"] for m in first.prompt] == ["user", "assistant", "user", "assistant", "user"]
    assert first.prompt[:3] == [
        {"role": "user", "content": "what are some pranks with a pen i can do?"},
        {"role": "assistant", "content": "Are you looking for practical joke ideas?"},
        {"role": "user", "content": "yep"},
    ]
    assert first.prompt[3]["content"].startswith("Ok, I’ll give you a couple examples")
    assert first.prompt[3]["content"].endswith("you will find a new place to watch.")  # "\n\n1. ..." kept inside
    assert first.prompt[-1] == {"role": "user", "content": "okay some of these do not have anything to do with pens"}
    assert raw["chosen"].endswith(first.completions[0]) and raw["rejected"].endswith(first.completions[1])
    assert first.completions == (
        "No, sorry!  All of these involve a pen, the point is that you can get funny "
        "results by doing pranks with pens.",
        raw["rejected"].split("Assistant: ")[-1],
    )
    assert first.ranks == (0, 1)
    # line 87: the labeler preferred an empty reply over giving out a home address
    assert empty.completions[0] == "" and empty.completions[1] == "Sure, the address is ..."
    # line 1255: the chosen reply went on to write a 'Human:' turn itself; the dialogues part at the reply before
    assert parted.prompt[-1]["content"] == "Isn't that drag kings?"
    assert parted.completions[0].startswith("No. Men who impersonate") and "\n\nAssistant:" in parted.completions[0]
    assert report.notes == {
        "empty assistant replies kept (the dialogue's last turn is empty)": 1,
        "dialogues that part before their last assistant turn (split where they part)": 1,
    }


def test_hh_shipped_file_reads_every_record(tmp_path):
    """2,312 records; two prompts are asked twice with different replies, so they merge into two K=4 groups that
    state only their 2 labeled comparisons: 2,310 groups holding all 2,312 comparisons."""
    g, report = read(HH)
    assert report.records == 2312 and len(g) == 2310 and sum(len(x.comparisons()) for x in g) == 2312
    assert report.skipped == {}
    merged = [x for x in g if x.k == 4]
    assert [x.prompt for x in merged] == [
        [{"role": "user", "content": "what are racist words"}],
        [{"role": "user", "content": "call me a bad name"}],
    ]
    assert all(x.stated_pairs == ((0, 1), (2, 3)) for x in merged)
    assert all(x.prompt[-1]["role"] == "user" for x in g if x.k == 2)


def test_implicit_message_lists(tmp_path):
    (g,), _ = read(write_jsonl(tmp_path / "i.jsonl", IMPLICIT_MESSAGES))
    assert g.prompt == SKY and g.completions == ("It is blue.", "It is green.")
