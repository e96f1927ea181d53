"""Across the readers of every format: bad input named by file, line, field and fix, malformed records raising only
DataErrors, partial orders reaching the loss, and training from each format. Each format's own reading is specified
in its module's file (tests/data/test_pairwise.py, test_dialogues.py, test_scored.py, test_oasst.py,
test_containers.py, test_readers.py for the native format)."""

import gzip
import json
import math

import pytest
import torch
from conftest import OASST_TREES, write_jsonl
from samples import (
    CONVERSATIONAL,
    IMPLICIT_MESSAGES,
    PAIRWISE,
    SCORED,
    SKY,
    UF_BINARIZED,
    ULTRAFEEDBACK,
    hh_lines,
    read,
)

from rankrm.data.encode import TokenizedGroup
from rankrm.data.groups import ReadReport
from rankrm.data.readers import FORMATS, read_groups
from rankrm.errors import DataError
from rankrm.loss import group_stats, kwise_loss
from rankrm.modeling.batch import collate, stated_pair_counts
from rankrm.training.config import TrainConfig

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


# ----------------------------------------------------------------------------------------------------------------
# Partial orders reach the loss


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
