"""data/pairwise.py: TRL's pairwise records (strings, conversations, replies that repeat the prompt) and their margins."""

import json
import math

import pytest
from conftest import write_jsonl
from samples import CONVERSATIONAL, PAIRWISE, SKY, UF_BINARIZED, read

from rankrm.data.readers import detect_format, read_groups
from rankrm.errors import DataError


def test_pairwise_standard_merges_a_prompt_into_a_partial_order_with_its_margins(tmp_path):
    """Records 1 and 3 share "The sky is": blue > green and green > cheese. blue > cheese was never labeled, so the
    group states exactly those two pairs (ranks alone would add the third); the margins follow comparisons()."""
    g, report = read(write_jsonl(tmp_path / "p.jsonl", PAIRWISE))
    assert detect_format(tmp_path / "p.jsonl") == "pairwise"
    sky, sun = g
    assert sky.prompt == "The sky is" and sky.completions == (" blue.", " green.", " made of cheese.")
    assert sky.comparisons() == [(0, 1), (1, 2)] and sky.stated_pairs == ((0, 1), (1, 2)) and sky.ranks == (0, 1, 2)
    assert sky.margins == (2.0, 0.5)
    assert sun.comparisons() == [(0, 1)] and sun.stated_pairs is None and sun.margins == (1.0,)
    assert report.records == 3 and report.groups == 2
    assert report.notes["pairwise records merged with others of the same prompt"] == 2
    assert report.notes["groups with margins (used by the loss with --margin-scale)"] == 2


def test_pairwise_records_stating_a_full_ranking_become_a_plain_ranked_group(tmp_path):
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": "b", "rejected": "c"},
        {"prompt": "p", "chosen": "a", "rejected": "c"},
        {"prompt": "p", "chosen": "a", "rejected": "b"},
    ]
    (g,), report = read(write_jsonl(tmp_path / "p.jsonl", rows), conflicts="drop")
    assert g.ranks == (0, 1, 2) and g.stated_pairs is None and sorted(g.comparisons()) == [(0, 1), (0, 2), (1, 2)]
    assert report.skipped == {"repeated comparisons (same prompt, chosen and rejected as an earlier record)": 1}
    (g,), report = read(write_jsonl(tmp_path / "p.jsonl", rows))  # keep: the repeat is a second vote on a > b
    assert g.ranks == (0, 1, 2) and g.stated_pairs == ((0, 1), (1, 2), (0, 2)) and g.counts == (2, 1, 1)
    assert report.notes["repeated comparisons kept as votes (a pair stated again)"] == 1 and not report.skipped


def test_pairwise_conversational(tmp_path):
    g, _ = read(write_jsonl(tmp_path / "c.jsonl", CONVERSATIONAL))
    assert g[0].prompt == SKY and g[0].completions == ("It is blue.", "It is green.") and g[0].ranks == (0, 1)
    assert g[1].prompt[0] == {"role": "system", "content": "Be brief."} and g[1].completions == ("4", "5")


def test_pairwise_whose_replies_repeat_the_prompt(tmp_path):
    (g,), _ = read(write_jsonl(tmp_path / "u.jsonl", UF_BINARIZED))
    assert g.prompt == [{"role": "user", "content": "Name a prime number."}] and g.completions == ("7", "9")
    bad = {**UF_BINARIZED[0], "prompt": "Name a composite number."}
    with pytest.raises(DataError, match=r"u.jsonl:2: field 'chosen': is a conversation that is not the prompt"):
        read_groups(write_jsonl(tmp_path / "u.jsonl", UF_BINARIZED + [bad]))


def test_margins_must_be_finite_and_given_for_all_records_of_a_prompt(tmp_path):
    f = write_jsonl(tmp_path / "m.jsonl", [PAIRWISE[0], {**PAIRWISE[2], "margin": None}])
    with pytest.raises(DataError, match=r"m.jsonl:2: field 'margin': is missing, and line 1 gives one"):
        read_groups(f)
    f = tmp_path / "nan.jsonl"
    f.write_text(json.dumps(PAIRWISE[0]) + "\n" + json.dumps({**PAIRWISE[1], "margin": math.nan}) + "\n")
    with pytest.raises(DataError, match=r"nan.jsonl:2: field 'margin': is nan"):
        read_groups(f)
