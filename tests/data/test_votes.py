"""Human judgments that repeat and disagree: every vote kept with its count (--conflicts keep), or dropped, or an
error as before; the counts survive conversion and weigh the loss; a multi-annotator file trains and evaluates."""

import math

import pytest
import torch
from conftest import write_jsonl

from rankrm.data.convert import convert_data
from rankrm.data.encode import TokenizedGroup, shuffled_pairs
from rankrm.data.groups import ReadReport
from rankrm.data.readers import read_groups
from rankrm.errors import DataError
from rankrm.loss import group_stats
from rankrm.modeling.batch import collate
from rankrm.training.config import TrainConfig

PHOTO, CHAIN, BOIL, HELLO = (
    "Explain photosynthesis in one sentence.",
    "Which answer is most helpful?",
    "At what temperature does water boil at sea level?",
    "Say hello.",
)
PLANTS = "Plants turn light, water and CO2 into sugar and oxygen."
SUN = "It is how plants eat sunlight."


def rec(annotator, prompt, chosen, rejected, **extra):
    return {"annotator": annotator, "prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}


# A small multi-annotator sample shaped like public human-judgment data: one record per annotator's vote.
VOTES = [
    rec("ann1", PHOTO, PLANTS, SUN, subset="chat"),
    rec(
        "ann2", BOIL, "100 degrees Celsius.", "90 degrees Celsius.", subset="reasoning", votes=3
    ),  # one record, 3 votes
    rec("ann2", PHOTO, PLANTS, SUN, subset="chat"),  # a repeat: two annotators agree
    rec("ann1", CHAIN, "x", "y", subset="chat"),
    rec("ann3", PHOTO, SUN, PLANTS, subset="chat"),  # a contradiction: the third annotator disagrees (2-1)
    rec("ann2", CHAIN, "y", "z", subset="chat"),
    rec("ann3", CHAIN, "z", "x", subset="chat"),  # a cycle across annotators: x > y > z > x
    rec("ann1", HELLO, "Hello!", "No.", subset="chat"),
]


def read(path, conflicts="keep", skip_invalid=False):
    report = ReadReport()
    return read_groups(path, "auto", report, skip_invalid, conflicts), report


def test_every_vote_is_kept_with_its_count(tmp_path):
    """keep (the default): 4 prompts. Photosynthesis: PLANTS > SUN twice, SUN > PLANTS once -> pairs ((0, 1),
    (1, 0)), counts (2, 1), ranks by net wins (+1, -1) -> (0, 1). The cycle x > y > z > x, one vote each: counts
    None, the three pairs kept, all tied by net wins. One record with votes 3: counts (3,). Hello: a plain group.
    Noted: 3 repeated votes (1 + 2), 1 contradictory pair, 1 cyclic group; nothing skipped."""
    groups, report = read(write_jsonl(tmp_path / "votes.jsonl", VOTES))
    photo, boil, chain, hello = groups
    assert photo.completions == (PLANTS, SUN) and photo.stated_pairs == ((0, 1), (1, 0)) and photo.counts == (2, 1)
    assert photo.ranks == (0, 1) and photo.votes() == [2, 1] and photo.subset == "chat"
    assert chain.stated_pairs == ((0, 1), (1, 2), (2, 0)) and chain.counts is None and chain.ranks == (0, 0, 0)
    assert boil.stated_pairs == ((0, 1),) and boil.counts == (3,) and boil.subset == "reasoning"
    assert hello.stated_pairs is None and hello.counts is None and hello.ranks == (0, 1)
    assert not report.skipped and report.groups == 4
    assert report.notes["repeated comparisons kept as votes (a pair stated again)"] == 3
    assert report.notes["contradictory comparisons kept as votes (a pair stated both ways)"] == 1
    assert report.notes["groups with cyclic comparisons kept (a > b > c > a)"] == 1
    assert report.notes["pairwise records merged with others of the same prompt"] == 6  # votes 3 is one record


def test_drop_and_error_behave_as_before(tmp_path):
    """drop: repeats counted once (1 + 2 skipped), the prompts that contradict (3 records) or cycle (3 records) left
    out; error: the contradiction is an error naming its lines."""
    f = write_jsonl(tmp_path / "votes.jsonl", VOTES)
    groups, report = read(f, "drop")
    assert [g.prompt for g in groups] == [BOIL, HELLO] and all(g.counts is None for g in groups)
    assert report.skipped == {
        "repeated comparisons (same prompt, chosen and rejected as an earlier record)": 3,
        "records of prompts whose judgments contradict or cycle (--conflicts drop)": 6,
    }
    with pytest.raises(DataError, match=r"votes.jsonl:5: field 'chosen': contradictory labels .*line 1, line 5"):
        read(f, "error")


def test_counts_round_trip_through_native_and_pairwise(tmp_path):
    """convert writes "counts" (native) or one record per pair with "votes" (pairwise), and "subset"; both read back
    to the same groups."""
    f = write_jsonl(tmp_path / "votes.jsonl", VOTES)
    groups, _ = read(f)
    for to in ("native", "pairwise"):
        out = tmp_path / f"out.{to}.jsonl"
        convert_data([f], out, to)
        back, report = read(out)
        assert not report.skipped
        key = lambda g: (g.prompt, g.completions, g.comparisons(), g.votes(), g.ranks, g.subset)  # noqa: E731
        assert [key(g) for g in back] == [key(g) for g in groups]
    native = (tmp_path / "out.native.jsonl").read_text().splitlines()[0]
    assert '"pairs": [[0, 1], [1, 0]], "counts": [2, 1]' in native and '"subset": "chat"' in native


def test_native_counts_are_validated(tmp_path):
    base = {"prompt": "p", "completions": ["a", "b"]}
    for bad, match in (
        ({"counts": [2]}, "field 'counts': is given without pairs"),
        ({"pairs": [[0, 1]], "counts": [0]}, r"field 'counts\[0\]': expected a positive integer"),
        ({"pairs": [[0, 1]], "counts": [1, 2]}, "field 'counts': expected a list of 1 positive"),
        ({"pairs": [[0, 1], [0, 1]]}, "repeats the comparison"),
    ):
        with pytest.raises(DataError, match=match):
            read(write_jsonl(tmp_path / "n.jsonl", [{**base, **bad}]))


def test_counts_reach_the_batch_the_loss_and_the_shuffled_pairs():
    """TokenizedGroup counts (2, 1) on a > b, b > a: the batch's (N, N) counts hold 2 at (0, 1) and 1 at (1, 0); at
    rewards (1, 0) the loss is (2 softplus(-1) + softplus(1)) / 3; the shuffled-pairs regime makes 3 examples."""
    g = TokenizedGroup([[1, 2], [1, 3]], [0, 1], [(0, 1), (1, 0)], [2, 1])
    b = collate([g], pad_id=0)
    assert b.pair_counts.tolist() == [[0.0, 2.0], [1.0, 0.0]]
    s = group_stats(torch.tensor([1.0, 0.0], dtype=torch.float64), b.ranks, b.group_index, 1, b.pair_counts)
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    assert s.loss.item() == pytest.approx((2 * sp(-1) + sp(1)) / 3, abs=1e-12) and s.pairs.item() == 3
    assert [x.ids for x in shuffled_pairs([g])] == [[[1, 2], [1, 3]]] * 2 + [[[1, 3], [1, 2]]]


def test_a_multi_annotator_file_trains_and_evaluates(model_dirs, tmp_path):
    """Two steps on the vote file as both training and held-out data, no --skip-invalid: every vote is scored (3
    photosynthesis + 3 votes on one record + 3 cycle + 1 = 10), and the vote metrics are reported."""
    import rankrm

    f = write_jsonl(tmp_path / "votes.jsonl", VOTES)
    cfg = TrainConfig(
        model=str(model_dirs["llama-chat"]),
        train_data=[str(f)],
        eval_data=[str(f)],
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        batch_size=4,
        max_length=48,
        learning_rate=1e-3,
        seed=0,
    )
    res = rankrm.train(cfg)
    assert res["after"]["pairs"] == 10 and res["eval_groups"] == 4 and math.isfinite(res["after"]["log_loss"])
    # majorities: photosynthesis (2 to 1), the cycle's 3 pairs (1 to 0 each), boil (3 to 0), hello: 6 pairs
    assert res["after"]["majority_pairs"] == 6 and res["after"]["split_pairs"] == 0
    assert res["after"]["accuracy_votes"] == res["after"]["accuracy"] and "calibration" in res["after"]


def test_votes_of_one_group_in_two_files_add_up(tmp_path):
    """File a ranks x > y > z (x>y, x>z, y>z once each); file b has the same prompt and completions, in another
    order, ranked y first and x, z tied (y>x, y>z). Merged, worked by hand: x>y 1, x>z 1, y>z 1 + 1 = 2, y>x 1 (a
    contradiction with x>y, kept as votes). Groups in one file only are as read; the merged group stands where it
    first came (file a), counted once, and the report says one group was merged. "only a" copied into b with the
    same judgment (completions reordered) is a duplicate, as an overlapping export is, not a second vote."""
    from rankrm.data.groups import ReadReport
    from rankrm.data.merge import MERGED
    from rankrm.data.readers import DUPLICATE, read_groups

    a = write_jsonl(
        tmp_path / "a.jsonl",
        [
            {"prompt": "p", "completions": ["x", "y", "z"], "ranks": [0, 1, 2]},
            {"prompt": "only a", "completions": ["u", "v"], "ranks": [0, 1]},
        ],
    )
    b = write_jsonl(
        tmp_path / "b.jsonl",
        [
            {"prompt": "only b", "completions": ["s", "t"], "ranks": [1, 0]},
            {"prompt": "p", "completions": ["y", "x", "z"], "ranks": [0, 1, 1]},
            {"prompt": "only a", "completions": ["v", "u"], "ranks": [1, 0]},
        ],
    )
    report = ReadReport()
    groups = read_groups([a, b], report=report)
    assert [g.prompt for g in groups] == ["p", "only a", "only b"]
    g = groups[0]
    votes = {(g.completions[w], g.completions[l]): n for (w, l), n in zip(g.comparisons(), g.votes())}
    assert votes == {("x", "y"): 1, ("x", "z"): 1, ("y", "z"): 2, ("y", "x"): 1}
    assert g.completions == ("x", "y", "z") and g.source.endswith("a.jsonl:1")
    assert groups[1].comparisons() == [(0, 1)] and groups[1].counts is None  # u > v once, not twice
    assert report.groups == 3 and report.notes[MERGED] == 1 and report.skipped[DUPLICATE] == 1
    # each file alone, and --conflicts drop (a repeat kept once): as before, the first file's judgment
    dropped = ReadReport()
    first = read_groups([a, b], report=dropped, conflicts="drop")[0]
    assert first.comparisons() == [(0, 1), (0, 2), (1, 2)] and first.counts is None
    assert dropped.skipped[DUPLICATE] == 2 and dropped.notes[MERGED] == 0
