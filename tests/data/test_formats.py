"""Readers of every format and container: real-shaped samples, partial orders, bad input, training from each."""

import gzip
import json
import math

import pytest
import torch
from conftest import OASST_FLAT, OASST_TREES, SHIPPED, write_jsonl

from rankrm.data.encode import TokenizedGroup
from rankrm.data.groups import RankedGroup, ReadReport
from rankrm.data.readers import FORMATS, detect_format, read_groups
from rankrm.data.scored import ranks_from_scores
from rankrm.data.splits import identical_prompts, write_native
from rankrm.errors import DataError
from rankrm.loss import group_stats, kwise_loss
from rankrm.modeling.batch import collate, stated_pair_counts
from rankrm.training.config import TrainConfig

HH = SHIPPED / "hh_harmless_base_test.jsonl.gz"
SKY = [{"role": "user", "content": "What color is the sky?"}]

# TRL's standard pairwise form (strings), with margins; two records share a prompt
PAIRWISE = [
    {"prompt": "The sky is", "chosen": " blue.", "rejected": " green.", "margin": 2.0},
    {"prompt": "The sun is", "chosen": " a star.", "rejected": " a planet.", "margin": 1.0},
    {"prompt": "The sky is", "chosen": " green.", "rejected": " made of cheese.", "margin": 0.5},
]
# TRL's conversational pairwise form
CONVERSATIONAL = [
    {
        "prompt": SKY,
        "chosen": [{"role": "assistant", "content": "It is blue."}],
        "rejected": [{"role": "assistant", "content": "It is green."}],
    },
    {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}],
    },
]
# TRL's implicit-prompt conversational form: whole conversations sharing their prompt
IMPLICIT_MESSAGES = [
    {
        "chosen": SKY + [{"role": "assistant", "content": "It is blue."}],
        "rejected": SKY + [{"role": "assistant", "content": "It is green."}],
    },
]
ANN = {"helpfulness": {"Rating": "4", "Rationale": "..."}}
# UltraFeedback's raw shape (trimmed): completions as objects with fine-grained and overall scores
ULTRAFEEDBACK = [
    {
        "source": "evol_instruct",
        "instruction": "Name a prime number.",
        "models": ["a", "b", "c", "d"],
        "completions": [
            {"model": "a", "response": "7", "fine-grained_score": 4.75, "overall_score": 8.0, "annotations": ANN},
            {"model": "b", "response": "9", "fine-grained_score": 1.25, "overall_score": 6.0, "annotations": ANN},
            {"model": "c", "response": "Seven.", "fine-grained_score": 4.75, "overall_score": 7.5, "annotations": ANN},
            {
                "model": "d",
                "response": "Two is prime.",
                "fine-grained_score": 4.5,
                "overall_score": 9.0,
                "annotations": ANN,
            },
        ],
    },
]
# HuggingFaceH4/ultrafeedback_binarized's shape: a string prompt; chosen and rejected repeat it as a user turn
UF_BINARIZED = [
    {
        "prompt": "Name a prime number.",
        "prompt_id": "0f3c",
        "score_chosen": 9.0,
        "score_rejected": 2.0,
        "chosen": [{"role": "user", "content": "Name a prime number."}, {"role": "assistant", "content": "7"}],
        "rejected": [{"role": "user", "content": "Name a prime number."}, {"role": "assistant", "content": "9"}],
        "messages": [{"role": "user", "content": "Name a prime number."}, {"role": "assistant", "content": "7"}],
    },
]
SCORED = [
    {"prompt": "Say hi", "completions": ["Hi!", "Hello there.", "Go away."], "scores": [7, 9, 2]},
    {"prompt": SKY, "completions": ["Blue.", "Green."], "ratings": [0.9, 0.1]},
]


def hh_lines(*numbers) -> list[str]:
    with gzip.open(HH, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    return [lines[n - 1] for n in numbers]


def read(path, fmt="auto", skip_invalid=False, conflicts="keep"):
    report = ReadReport()
    return read_groups(path, fmt, report, skip_invalid, conflicts), report


# ----------------------------------------------------------------------------------------------------------------
# Each format on a small real-shaped sample


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


def test_margins_must_be_finite_and_given_for_all_records_of_a_prompt(tmp_path):
    f = write_jsonl(tmp_path / "m.jsonl", [PAIRWISE[0], {**PAIRWISE[2], "margin": None}])
    with pytest.raises(DataError, match=r"m.jsonl:2: field 'margin': is missing, and line 1 gives one"):
        read_groups(f)
    f = tmp_path / "nan.jsonl"
    f.write_text(json.dumps(PAIRWISE[0]) + "\n" + json.dumps({**PAIRWISE[1], "margin": math.nan}) + "\n")
    with pytest.raises(DataError, match=r"nan.jsonl:2: field 'margin': is nan"):
        read_groups(f)


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


def test_scored_completions_become_ranks_with_ties(tmp_path):
    f = write_jsonl(tmp_path / "s.jsonl", SCORED + ULTRAFEEDBACK)
    assert detect_format(f) == "scored"
    (hi, sky, uf), report = read(f)
    assert hi.ranks == (1, 0, 2) and sky.ranks == (0, 1)
    # fine-grained_score, not overall_score: 4.75, 1.25, 4.75, 4.5 -> "7" and "Seven." tie for best
    assert uf.prompt == "Name a prime number." and uf.completions[2] == "Seven."
    assert uf.ranks == (0, 2, 0, 1) and (0, 2) not in uf.comparisons() and len(uf.comparisons()) == 5
    assert ranks_from_scores([7, 9, 7, 3]) == (1, 0, 1, 2)


def test_scored_all_tied_is_skipped_and_counted(tmp_path):
    g, report = read(write_jsonl(tmp_path / "s.jsonl", [SCORED[0], {**SCORED[0], "prompt": "x", "scores": [1] * 3}]))
    assert len(g) == 1 and report.skipped == {"all completions tied: no comparison": 1}


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


# ----------------------------------------------------------------------------------------------------------------
# Containers: JSON, gzip, Parquet, CSV, datasets directories, hub ids


def test_json_list_and_gzip(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps(PAIRWISE, indent=2))
    with gzip.open(tmp_path / "p.json.gz", "wt") as f:
        json.dump(PAIRWISE, f)
    for name in ("p.json", "p.json.gz"):
        g, report = read(tmp_path / name)
        assert len(g) == 2 and report.records == 3 and g[0].stated_pairs == ((0, 1), (1, 2))


def test_json_list_errors_name_the_record(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps([PAIRWISE[0], {**PAIRWISE[1], "chosen": 5}]))
    with pytest.raises(DataError, match=r"p.json:record 2: field 'chosen': expected a string"):
        read_groups(tmp_path / "p.json")


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(CONVERSATIONAL), tmp_path / "c.parquet")
    g, _ = read(tmp_path / "c.parquet")
    assert g[0].prompt == SKY and g[1].completions == ("4", "5")
    pq.write_table(
        pa.Table.from_pylist(ULTRAFEEDBACK + [{**ULTRAFEEDBACK[0], "instruction": "Name a composite."}]),
        tmp_path / "u.parquet",
    )
    assert [x.ranks for x in read(tmp_path / "u.parquet")[0]] == [(0, 2, 0, 1)] * 2
    rows = [{"prompt": "x", "completions": ["a", "b"], "scores": [1.0, float("inf")]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet:record 1: field 'scores\[1\]': is inf"):
        read_groups(tmp_path / "bad.parquet")


def test_oasst_flat_export_as_parquet_written_by_pandas(tmp_path):
    """pandas stores the missing ranks of unranked messages as NaN: they read as null, and the groups are those of
    the JSONL lines."""
    import pandas as pd

    lines = OASST_FLAT.read_text(encoding="utf-8").splitlines()[:300]
    write_jsonl(tmp_path / "o.jsonl", lines)
    cols = ["message_id", "parent_id", "message_tree_id", "text", "role", "rank", "deleted", "synthetic", "lang"]
    df = pd.DataFrame([json.loads(x) for x in lines])[cols]
    assert df["rank"].isna().any()
    df.to_parquet(tmp_path / "o.parquet")
    a, b = read(tmp_path / "o.jsonl")[0], read(tmp_path / "o.parquet")[0]
    assert len(a) > 20 and [(x.prompt, x.completions, x.ranks) for x in a] == [
        (x.prompt, x.completions, x.ranks) for x in b
    ]


def test_csv_with_message_lists_as_json_cells(tmp_path):
    import csv

    with open(tmp_path / "p.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "chosen", "rejected", "margin"])
        w.writerow(["The sky is", " blue.", " green.", "1.5"])
        w.writerow([json.dumps(SKY), "It is blue,\nsaid she.", "It is green.", ""])  # a line break inside a cell
        w.writerow(["[INST] plain text [/INST]", "a", "b", ""])
    (a, b, c), _ = read(tmp_path / "p.csv")
    assert a.prompt == "The sky is" and a.margins == (1.5,)
    assert b.prompt == SKY and b.completions[0] == "It is blue,\nsaid she." and b.margins is None
    assert c.prompt == "[INST] plain text [/INST]"
    with open(tmp_path / "s.csv", "w", newline="") as f:
        csv.writer(f).writerows(
            [
                ["prompt", "completions", "scores"],
                ["Say hi", '["Hi!", "Go away."]', "[2, 1]"],
                ["Say bye", '["Bye", "Go away."', "[2, 1]"],
            ]
        )
    with pytest.raises(DataError, match=r"s.csv:3: field 'completions': malformed JSON in a CSV cell"):
        read_groups(tmp_path / "s.csv")


def test_datasets_directory_and_split_suffix(tmp_path):
    import datasets

    datasets.Dataset.from_list(PAIRWISE).save_to_disk(str(tmp_path / "ds"))
    g, report = read(tmp_path / "ds")
    assert len(g) == 2 and report.records == 3
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(PAIRWISE), "test": datasets.Dataset.from_list(PAIRWISE[:2])}
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    assert len(read_groups(f"{tmp_path / 'dd'}:test")) == 2
    with pytest.raises(DataError, match=r"has several splits \(train, test\)\. Fix: name one, as .*dd:SPLIT"):
        read_groups(tmp_path / "dd")


def test_hub_ids_go_through_load_dataset(monkeypatch):
    """Offline: the hub call is replaced, to check the name, data_dir and split it would be made with."""
    import datasets

    calls = []

    def fake(repo, data_dir=None, split=None):
        calls.append((repo, data_dir, split))
        return datasets.Dataset.from_list([json.loads(x) for x in hh_lines(1, 2, 3)])

    monkeypatch.setattr(datasets, "load_dataset", fake)
    g, _ = read("hf:Anthropic/hh-rlhf/harmless-base:test")
    assert calls[-1] == ("Anthropic/hh-rlhf", "harmless-base", "test") and len(g) == 3
    assert g[0].source == "hf:Anthropic/hh-rlhf/harmless-base:test:record 1"


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"nope.jsonl: does not exist"):
        read_groups(tmp_path / "nope.jsonl")


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


# ----------------------------------------------------------------------------------------------------------------
# Bad input: every kind names the file, the line (or record), the field and the fix


BAD = [  # (format's good sample, bad record, field, words)
    (PAIRWISE, '{"prompt": "x", "chosen": "a", ', None, "malformed JSON"),
    (PAIRWISE, {"prompt": "x", "chosen": "a"}, "rejected", "is missing"),
    (PAIRWISE, {"prompt": "x", "chosen": 3, "rejected": "b"}, "chosen", "expected a string or a list of messages"),
    (
        PAIRWISE,
        {"prompt": "x", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
        "chosen",
        "expected one assistant message",
    ),
    (PAIRWISE, {"prompt": "x", "chosen": " ", "rejected": "b"}, "chosen", "is empty"),
    (PAIRWISE, {"prompt": "x", "chosen": "a", "rejected": "a"}, "rejected", "is the same text as 'chosen'"),
    (PAIRWISE, {"prompt": "x", "chosen": "a", "rejected": "b", "margin": "big"}, "margin", "expected a number"),
    (PAIRWISE, {"prompt": "x", "chosen": "a", "rejected": "b", "margin": math.inf}, "margin", "is inf"),
    (IMPLICIT_MESSAGES, {"chosen": "\n\nHuman: hi\n\nAssistant: a"}, "rejected", "is missing"),
    (IMPLICIT_MESSAGES, {"chosen": "hi there", "rejected": "hi you"}, "rejected", "shares no dialogue"),
    (
        IMPLICIT_MESSAGES,
        {"chosen": "Q: hi\n\nAssistant: a", "rejected": "Q: hi\n\nAssistant: b"},
        "chosen",
        "does not start with a",
    ),
    (
        IMPLICIT_MESSAGES,
        {"chosen": SKY + [{"role": "assistant", "content": "a"}], "rejected": "x"},
        "rejected",
        "is a str and 'chosen' a list",
    ),
    (
        IMPLICIT_MESSAGES,
        {"chosen": SKY + [{"role": "assistant", "content": "a"}], "rejected": SKY},
        "rejected",
        "goes on for 0 message(s)",
    ),
    (
        IMPLICIT_MESSAGES,
        {
            "chosen": SKY + [{"role": "assistant", "content": "a"}],
            "rejected": SKY + [{"role": "assistant", "content": "a"}],
        },
        "rejected",
        "same conversation",
    ),
    (SCORED, {"prompt": "x", "completions": ["a"], "scores": [1]}, "completions", "a ranking needs at least 2"),
    (SCORED, {"prompt": "x", "completions": ["a", ""], "scores": [1, 2]}, "completions[1]", "is empty"),
    (SCORED, {"prompt": "x", "completions": ["a", "a"], "scores": [1, 2]}, "completions[1]", "duplicates"),
    (SCORED, {"prompt": "x", "completions": ["a", "b"], "scores": [1]}, "scores", "has 1 scores for 2 completions"),
    (SCORED, {"prompt": "x", "completions": ["a", "b"], "scores": [1, math.nan]}, "scores[1]", "is nan"),
    (SCORED, {"prompt": "x", "completions": ["a", "b"], "scores": [-math.inf, 1]}, "scores[0]", "is -inf"),
    (SCORED, {"prompt": "x", "completions": ["a", "b"], "scores": "1,2"}, "scores", "expected a list of numbers"),
    (SCORED, {"prompt": "x", "completions": ["a", "b"]}, "scores", "is missing"),
    (
        ULTRAFEEDBACK,
        {
            "instruction": "x",
            "completions": [{"response": "a", "overall_score": 1}, {"response": "b", "overall_score": math.nan}],
        },
        "completions[1].overall_score",
        "is nan",
    ),
    (
        ULTRAFEEDBACK,
        {"instruction": "x", "completions": [{"response": "a", "overall_score": 1}, {"response": "b"}]},
        "completions[1].overall_score",
        "is missing",
    ),
]


@pytest.mark.parametrize("good, record, field, words", BAD)
def test_bad_records_name_file_line_field_and_fix(tmp_path, good, record, field, words):
    f = write_jsonl(tmp_path / "bad.jsonl", [good[0], record])
    with pytest.raises(DataError) as e:
        read_groups(f)
    msg = str(e.value)
    assert "bad.jsonl:2:" in msg and words in msg and "Fix:" in msg, msg
    if field:
        assert f"field '{field}'" in msg, msg
    # with --skip-invalid the good record is kept and the bad one counted under its reason
    g, report = read(f, skip_invalid=True)
    assert len(g) == 1 and sum(report.skipped.values()) == 1 and e.value.reason in next(iter(report.skipped))


@pytest.mark.parametrize("good", [PAIRWISE, IMPLICIT_MESSAGES, SCORED])
def test_non_utf8_bytes_name_the_line_in_every_reader(tmp_path, good):
    f = tmp_path / "bad.jsonl"
    f.write_bytes(json.dumps(good[0]).encode() + b'\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid UTF-8.*Fix: re-encode"):
        read_groups(f)
    g, report = read(f, skip_invalid=True)
    assert len(g) == 1 and report.skipped == {"invalid: not valid UTF-8": 1}


def test_non_utf8_bytes_in_csv_name_line_and_column(tmp_path):
    (tmp_path / "bad.csv").write_bytes(b"prompt,chosen,rejected\nhi,a,b\nhi,caf\xe9,b\n")
    with pytest.raises(DataError, match=r"bad.csv:3: field 'chosen': is not valid UTF-8"):
        read_groups(tmp_path / "bad.csv")


def test_skip_invalid_counts_by_reason(tmp_path):
    rows = [
        PAIRWISE[0],
        "{broken",
        {"prompt": "x", "chosen": "a"},
        {"prompt": "y", "chosen": "a"},
        {"prompt": "z", "chosen": "", "rejected": "b"},
        PAIRWISE[1],
    ]
    g, report = read(write_jsonl(tmp_path / "p.jsonl", rows), skip_invalid=True)
    assert len(g) == 2 and report.records == 6
    assert report.skipped == {
        "invalid: malformed JSON": 1,
        "invalid: rejected: is missing": 2,
        "invalid: empty completion": 1,
    }
    assert "skipped 2 (invalid: rejected: is missing)" in report.summary()


# ----------------------------------------------------------------------------------------------------------------
# Every reader, fed malformed records: the documented DataError, never another exception


def _reader_property_test(max_examples: int):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    fields = [
        "prompt",
        "completions",
        "ranks",
        "pairs",
        "margins",
        "tree",
        "chosen",
        "rejected",
        "margin",
        "scores",
        "ratings",
        "instruction",
        "response",
        "score",
        "fine-grained_score",
        "overall_score",
        "role",
        "content",
        "text",
        "replies",
        "rank",
        "deleted",
        "synthetic",
        "message_id",
        "parent_id",
        "message_tree_id",
    ]
    leaf = (
        st.none()
        | st.booleans()
        | st.integers(-2, 4)
        | st.floats()
        | st.sampled_from(["", " ", "a", "b"])
        | st.sampled_from(["user", "assistant", "prompter", "\n\nHuman: hi\n\nAssistant: a"])
        | st.text(max_size=5)
    )
    value = st.recursive(
        leaf,
        lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.sampled_from(fields), ch, max_size=4),
        max_leaves=10,
    )
    samples = (
        PAIRWISE
        + CONVERSATIONAL
        + UF_BINARIZED
        + IMPLICIT_MESSAGES
        + SCORED
        + ULTRAFEEDBACK
        + [
            {"prompt": "p", "completions": ["a", "b", "c"], "ranks": [0, 1, 1], "pairs": [[0, 1]], "margins": [1.0]},
            {"message_id": "m1", "parent_id": None, "message_tree_id": "t", "text": "hi", "role": "prompter"},
            {
                "message_id": "m2",
                "parent_id": "m1",
                "message_tree_id": "t",
                "text": "a",
                "role": "assistant",
                "rank": 0,
            },
            {
                "message_tree_id": "t",
                "prompt": {
                    "text": "hi",
                    "role": "prompter",
                    "replies": [
                        {"text": "a", "role": "assistant", "rank": 0},
                        {"text": "b", "role": "assistant", "rank": 1},
                    ],
                },
            },
        ]
    )
    mutated = st.builds(
        lambda base, key, v, drop: {k: x for k, x in base.items() if k != key} if drop else {**base, key: v},
        st.sampled_from(samples),
        st.sampled_from(fields),
        value,
        st.booleans(),
    )
    record = mutated | st.dictionaries(st.sampled_from(fields), value, max_size=5)
    line = record.map(json.dumps) | st.sampled_from(["{", "[1]", "null", '"x"', "\x00"])

    @settings(max_examples=max_examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.lists(line, min_size=1, max_size=5))
    def check(tmp, lines):
        f = tmp / "h.jsonl"
        f.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
        for fmt in FORMATS:
            try:
                list(fmt.stream(f, ReadReport(), False, "keep"))
            except DataError:
                pass
            list(fmt.stream(f, ReadReport(), True, "keep"))  # skipping invalid records never raises on a JSONL file
        try:
            read_groups(f)
        except DataError:
            pass

    return check


def test_every_reader_raises_only_data_errors_on_malformed_records(tmp_path_factory):
    _reader_property_test(100)(tmp_path_factory.mktemp("hyp"))


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


# ----------------------------------------------------------------------------------------------------------------
# Partial orders reach the loss; identical prompts across files


def test_pair_counts_of_a_partial_order_and_its_loss():
    """Group 0 states a > b and c > d only (ranks (0, 1, 0, 1) would also say a > d and c > b); group 1 is a plain
    ranking x > y. Rewards a..d = 1, 0, 0, 2 and x, y = 0, 0:
    group 0: mean of softplus(-(1 - 0)) and softplus(-(0 - 2)) = (0.31326 + 2.12693) / 2; group 1: log 2."""
    groups = [TokenizedGroup([[1], [2], [3], [4]], [0, 1, 0, 1], [(0, 1), (2, 3)]), TokenizedGroup([[5], [6]], [0, 1])]
    b = collate(groups, pad_id=0)
    want = torch.zeros(6, 6)
    want[0, 1] = want[2, 3] = want[4, 5] = 1.0
    assert torch.equal(b.pair_counts, want) and torch.equal(stated_pair_counts(groups), want)
    assert collate(groups[1:], pad_id=0).pair_counts is None
    rewards = torch.tensor([1.0, 0.0, 0.0, 2.0, 0.0, 0.0], dtype=torch.float64)
    stats = group_stats(rewards, b.ranks, b.group_index, 2, b.pair_counts)
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731  softplus: -log sigmoid(d) = softplus(-d)
    assert stats.loss.tolist() == pytest.approx([(sp(-1) + sp(2)) / 2, math.log(2)], abs=1e-12)
    assert stats.pairs.tolist() == [2, 1]
    assert kwise_loss(stats).item() == pytest.approx(((sp(-1) + sp(2)) / 2 + math.log(2)) / 2, abs=1e-12)
    # without the mask, the ranks would add a > d and c > b
    assert group_stats(rewards, b.ranks, b.group_index, 2).pairs.tolist() == [4, 1]


def test_identical_prompts_across_files():
    a = [RankedGroup("p", ("a", "b"), (0, 1)), RankedGroup(SKY, ("a", "b"), (0, 1))]
    b = [RankedGroup([dict(m) for m in SKY], ("c", "d"), (0, 1)), RankedGroup("q", ("a", "b"), (0, 1))]
    assert identical_prompts(a, b) == 1


# ----------------------------------------------------------------------------------------------------------------
# Training runs from each format


TRAIN_SAMPLES = {
    "native": lambda d: write_jsonl(
        d / "n.jsonl",
        [{"prompt": f"Say {i}", "completions": [f"{i}", f"no {i}", "x"], "ranks": [0, 1, 1]} for i in range(8)],
    ),
    "pairwise": lambda d: write_jsonl(
        d / "p.jsonl",
        PAIRWISE * 1 + [{"prompt": f"Count to {i}", "chosen": f"{i}", "rejected": f"{i + 1}"} for i in range(6)],
    ),
    "conversational": lambda d: write_jsonl(
        d / "c.jsonl",
        CONVERSATIONAL
        + [
            {
                "prompt": [{"role": "user", "content": f"Count to {i}"}],
                "chosen": [{"role": "assistant", "content": "ok"}],
                "rejected": [{"role": "assistant", "content": "no"}],
            }
            for i in range(6)
        ],
    ),
    "implicit": lambda d: _gz(d / "hh.jsonl.gz", hh_lines(*range(1, 13), 251, 1484)),
    "scored": lambda d: write_jsonl(
        d / "s.jsonl",
        SCORED
        + ULTRAFEEDBACK
        + [{"prompt": f"Rate {i}", "completions": ["good", "bad"], "scores": [i + 1, i]} for i in range(6)],
    ),
    "oasst": lambda d: write_jsonl(d / "o.jsonl", OASST_TREES.read_text(encoding="utf-8").splitlines()[:4]),
}


def _gz(path, lines):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("name", list(TRAIN_SAMPLES))
def test_training_runs_from_each_format(model_dirs, tmp_path, name):
    """Two steps from each format, evaluated on the same file: the metrics count exactly the stated comparisons
    (a partial order's unstated pairs are not scored), and the batches the training loop reads carry the partial
    order's stated pairs (the loss's mask) where the format states them."""
    import importlib

    from rankrm.data.encode import TextEncoder
    from rankrm.modeling.batch import collate
    from rankrm.training.data import load_data

    train_module = importlib.import_module("rankrm.training.run")  # the module (rankrm.train is the function)
    data = TRAIN_SAMPLES[name](tmp_path)
    cfg = TrainConfig(
        model=str(model_dirs["llama-chat"]),
        train_data=[str(data)],
        eval_data=[str(data)],
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        batch_size=8,
        max_length=48,
        max_train_groups=16,
        learning_rate=1e-3,
        seed=0,
    )
    res = train_module.train(cfg)
    groups = read_groups(data)
    assert res["eval_groups"] == len(groups)
    assert res["after"]["pairs"] == sum(len(g.comparisons()) for g in groups)
    assert math.isfinite(res["after"]["log_loss"]) and (tmp_path / "run" / "eval_results.json").is_file()
    partial = any(g.stated_pairs is not None for g in groups)
    assert partial == (name in ("pairwise", "implicit"))
    train_groups = list(load_data(cfg, TextEncoder.from_pretrained(cfg.model, cfg.max_length)).train)
    counts = collate(train_groups, 0).pair_counts  # what the loop hands the loss
    assert (counts is not None) == partial
    if partial:  # exactly the stated comparisons, no pair the ranks would imply beyond them
        assert int(counts.sum()) == sum(sum(g.votes()) for g in train_groups)
        assert int((counts > 0).sum()) == sum(len(g.comparisons()) for g in train_groups)
