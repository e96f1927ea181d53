"""Length-aware evaluation against numbers worked out by hand: the longer-wins baseline (tokens and characters),
the shorter/longer split, the reward-length Spearman correlation, the length-matched bins, per-comparison slices
and the warning; then `rankrm eval --slice` on a pairwise file whose merged records carry different fields."""

import json
import math

import numpy as np
import pytest
from conftest import write_jsonl

from rankrm.cli import main
from rankrm.data.readers import read_groups
from rankrm.evaluation.evaluate import EvalResult, Labels
from rankrm.evaluation.formatting import format_report
from rankrm.evaluation.length import average_ranks, spearman
from rankrm.modeling.model import RewardModel


def example(chars: bool = True) -> EvalResult:
    """Three prompts, six votes (without chars: only the token lengths known, so the split, bins and correlation
    use tokens).

    g1: K=3 ranked 0 > 1 > 2, rewards (3, 1, 2), tokens (10, 5, 20), chars (40, 20, 80), no fields.
        (0,1): d=+2 right; preferred longer (10 > 5): longer-wins right (chars 40 > 20 right).
        (0,2): d=+1 right; preferred shorter (10 < 20): longer-wins wrong (chars wrong).
        (1,2): d=-1 wrong; preferred shorter (5 < 20): longer-wins wrong (chars wrong).
    g2: K=2, one pair stated by 2 votes, rewards (0, 0): a reward tie, 1/2 each; tokens (8, 8): a length tie, 1/2
        each; chars (30, 35): the preferred is shorter, wrong. annotator "a".
    g3: K=2, rewards (2, 1): right; tokens (12, 4), chars (50, 10): preferred longer, longer-wins right.
        annotator "b".
    Model accuracy (1 + 1 + 0 + 2 * 1/2 + 1) / 6 = 4/6. Longer wins by tokens (1 + 0 + 0 + 1 + 1) / 6 = 1/2; by
    characters (1 + 0 + 0 + 0 + 1) / 6 = 1/3."""
    c = (40, 20, 80), (30, 35), (50, 10)
    if not chars:
        c = None, None, None
    lab = [
        Labels((0, 1, 2), ((0, 1), (0, 2), (1, 2)), (1, 1, 1), True, None, (10, 5, 20), c[0]),
        Labels((0, 1), ((0, 1),), (2,), False, None, (8, 8), c[1], {"annotator": ("a",)}),
        Labels((0, 1), ((0, 1),), (1,), True, None, (12, 4), c[2], {"annotator": ("b",)}),
    ]
    rewards = (np.array([3.0, 1, 2]), np.array([0.0, 0]), np.array([2.0, 1]))
    correct, pairs = np.array([2.0, 1.0, 1.0]), np.array([3.0, 2.0, 1.0])
    ll = lambda d: math.log1p(math.exp(-d))  # noqa: E731
    nll = np.array([ll(2) + ll(1) + ll(-1), 2 * ll(0), ll(1)])
    return EvalResult(correct, pairs, nll, rewards, tuple(lab))


def test_longer_wins_baseline_and_the_shorter_longer_split_by_hand():
    """By characters (known): preferred longer g1(0,1), g3: 2/2; shorter g1(0,2) right, g1(1,2) wrong, g2 (30 < 35)
    a tie twice: 2/4. By tokens (no characters): longer g1(0,1), g3: 2/2; shorter g1(0,2), g1(1,2): 1/2; same
    length g2 (8 = 8): 1/2 over 2 votes."""
    m = example().metrics
    length = m["length"]
    assert m["accuracy"] == pytest.approx(4 / 6) and length["unit"] == "chars"
    assert length["longer_wins_tokens"] == pytest.approx(1 / 2)
    assert length["longer_wins_chars"] == pytest.approx(1 / 3)
    assert length["by_preferred_length"] == {
        "longer": {"accuracy": 1.0, "pairs": 2},
        "shorter": {"accuracy": 0.5, "pairs": 4},
        "same": {"accuracy": None, "pairs": 0},
    }
    assert length["warning"] is None
    json.dumps(m, allow_nan=False)
    tokens = example(chars=False).metrics["length"]
    assert tokens["unit"] == "tokens" and tokens["longer_wins_chars"] is None
    assert tokens["by_preferred_length"] == {
        "longer": {"accuracy": 1.0, "pairs": 2},
        "shorter": {"accuracy": 0.5, "pairs": 2},
        "same": {"accuracy": 0.5, "pairs": 2},
    }


def test_spearman_by_hand():
    """Over all seven completions: rewards (3,1,2, 0,0, 2,1) have average ranks (7, 3.5, 5.5, 1.5, 1.5, 5.5, 3.5),
    centred on 4: (3, -.5, 1.5, -2.5, -2.5, 1.5, -.5), squares summing to 26.5. Tokens (10,5,20, 8,8, 12,4) have
    ranks (5, 2, 7, 3.5, 3.5, 6, 1), centred (1, -2, 3, -.5, -.5, 2, -3): products sum to 15.5, squares to 27.5, so
    rho = 15.5 / sqrt(26.5 * 27.5) = 0.574173. Characters (40,20,80, 30,35, 50,10): ranks (5, 2, 7, 3, 4, 6, 1),
    centred (1, -2, 3, -1, 0, 2, -3): products 15.5, squares 28: rho = 15.5 / sqrt(26.5 * 28) = 0.569023. Per
    prompt (both units): g1 ranks (3,1,2) vs (2,1,3): 1/2; g2's rewards are constant (left out); g3: +1; mean 0.75
    over 2 prompts."""
    assert list(average_ranks([3, 1, 2, 0, 0, 2, 1])) == [7, 3.5, 5.5, 1.5, 1.5, 5.5, 3.5]
    corr = example(chars=False).metrics["length"]["correlation"]
    assert corr["spearman"] == pytest.approx(15.5 / math.sqrt(26.5 * 27.5))
    assert corr == {"spearman": pytest.approx(0.574173, abs=1e-6), "spearman_per_prompt": 0.75, "prompts": 2}
    corr = example().metrics["length"]["correlation"]
    assert corr == {"spearman": pytest.approx(0.569023, abs=1e-6), "spearman_per_prompt": 0.75, "prompts": 2}
    assert spearman([1, 1], [1, 2]) is None


def test_length_matched_bins_by_hand():
    """Tokens (the example without characters): |log((1 + len_w) / (1 + len_l))| of the five comparisons: g1 log
    11/6 = 0.606, log 21/11 = 0.647, log 21/6 = 1.253; g2 0; g3 log 13/5 = 0.956. Quantiles (the lower data point) at
    0, 1/4, 1/2, 3/4, 1 are the five sorted values: four bins, each (lo, hi] but the first [lo, hi]. [0, 0.606]: g2
    (2 votes, both ties: model 1/2, longer-wins 1/2) and g1(0,1) (right, right): model 2/3, longer-wins 2/3, 3 votes;
    (0.606, 0.647]: g1(0,2): 1, 0; (0.647, 0.956]: g3: 1, 1; (0.956, 1.253]: g1(1,2): 0, 0."""
    bins = example(chars=False).metrics["length"]["length_matched"]
    assert [b["pairs"] for b in bins] == [3, 1, 1, 1]
    assert [b["accuracy"] for b in bins] == [pytest.approx(2 / 3), 1.0, 1.0, 0.0]
    assert [b["longer_wins"] for b in bins] == [pytest.approx(2 / 3), 0.0, 1.0, 0.0]
    assert bins[0]["log_ratio"] == [0.0, pytest.approx(math.log(11 / 6))]
    assert bins[3]["log_ratio"] == [pytest.approx(math.log(13 / 5)), pytest.approx(math.log(21 / 6))]
    assert example().metrics["length"]["length_matched"] != bins  # with characters known, they are the unit


def test_slices_per_comparison_by_hand():
    """annotator: g1's three comparisons carry none; (none): accuracy 2/3, longer-wins (characters) 1/3, log loss the
    mean of log(1+e^-2), log(1+e^-1), log(1+e^1) = 0.584484; a: g2's tie, 1/2 and log 2 over 2 votes, longer-wins 0
    (30 < 35 characters); b: g3, 1 and log(1+e^-1), longer-wins 1. length: the split above, per comparison."""
    s = example().slices(["annotator", "length"])
    none, a, b = s["annotator"]["(none)"], s["annotator"]["a"], s["annotator"]["b"]
    assert (none["accuracy"], none["longer_wins"], none["pairs"]) == (pytest.approx(2 / 3), pytest.approx(1 / 3), 3)
    assert none["log_loss"] == pytest.approx(0.584484, abs=1e-6)
    assert a == {"accuracy": 0.5, "log_loss": pytest.approx(math.log(2)), "longer_wins": 0.0, "pairs": 2}
    assert b == {"accuracy": 1.0, "log_loss": pytest.approx(math.log1p(math.exp(-1))), "longer_wins": 1.0, "pairs": 1}
    assert {k: (v["accuracy"], v["pairs"]) for k, v in s["length"].items()} == {
        "longer preferred": (1.0, 2),
        "shorter preferred": (0.5, 4),
    }
    tokens = example(chars=False).slices(["length"])["length"]
    assert {k: v["pairs"] for k, v in tokens.items()} == {
        "longer preferred": 2,
        "same length": 2,
        "shorter preferred": 2,
    }
    with pytest.raises(ValueError, match="no comparison carries a field 'judge'.*length, annotator"):
        example().slices(["judge"])


def test_a_model_that_does_not_beat_longer_wins_gets_the_warning():
    """g3's rewards flipped to (1, 2): model accuracy 3/6 = 1/2, equal to longer-wins by tokens (1/2): not beaten."""
    res = example()
    res = EvalResult(
        res.correct - np.array([0, 0, 1.0]), res.pairs, res.nll, res.rewards[:2] + (np.array([1.0, 2]),), res.labels
    )
    m = res.metrics
    assert m["accuracy"] == 0.5
    want = "warning: the length-only baseline (longer wins) scores 0.5000 on these pairs, the model 0.5000"
    assert m["length"]["warning"] == want
    assert want in format_report(m).splitlines()
    assert "warning" not in format_report(example().metrics)


def test_lengths_round_trip_through_json_and_old_results_have_no_length_block():
    res = example()
    again = EvalResult.from_json(json.loads(json.dumps(res.to_json())))
    assert again.metrics == res.metrics and again.slices(["annotator"]) == res.slices(["annotator"])
    old = res.to_json()
    for lab in old["labels"]:
        for key in ("tokens", "chars", "fields"):
            del lab[key]
    assert "length" not in EvalResult.from_json(old).metrics


def pairwise_rows():
    """One prompt, three records merged into one group: A > B (judge x), B > C (judge y), and A > C stated by
    no judge; a second prompt: its chosen is the shorter."""
    long, mid, short = "good " * 12, "good good red", "red"
    return [
        {"prompt": "P1", "chosen": long, "rejected": mid, "judge": "x", "note": "z" * 200},
        {"prompt": "P1", "chosen": mid, "rejected": short, "judge": "y"},
        {"prompt": "P1", "chosen": long, "rejected": short},
        {"prompt": "P2", "chosen": "no", "rejected": "no no no no no", "judge": "x"},
    ]


def test_merged_pairwise_records_keep_their_fields_per_comparison(tmp_path):
    """The three records of P1 state a whole ranking, so the group is a plain ranked group; its fields are
    reordered with its comparisons; text over 100 characters is not a label and is not kept."""
    src = write_jsonl(tmp_path / "p.jsonl", pairwise_rows())
    g = read_groups(src, "pairwise")[0]
    assert g.stated_pairs is None
    by_pair = {(g.completions[w], g.completions[l]): j for (w, l), j in zip(g.comparisons(), g.fields["judge"])}
    long, mid, short = "good " * 12, "good good red", "red"
    assert by_pair == {(long, mid): "x", (mid, short): "y", (long, short): None}
    assert set(g.fields) == {"judge"}


def test_eval_slices_by_a_record_field_and_by_length(model_dirs, tmp_path, capsys):
    """`rankrm eval --slice judge --slice length --json`: the characters baseline is the file's own (P1: chosen
    longer in all three; P2: shorter: 3/4); each slice's votes add up to all, and its accuracies to the model's."""
    src = write_jsonl(tmp_path / "p.jsonl", pairwise_rows())
    model = tmp_path / "m"
    RewardModel.from_pretrained(str(model_dirs["llama-chat"])).save_pretrained(model)
    argv = ["eval", "--model", str(model), "--data", str(src)]
    assert main([*argv, "--json", "--slice", "judge", "--slice", "length"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["length"]["longer_wins_chars"] == 0.75 and m["length"]["longer_wins_tokens"] == 0.75
    assert m["length"]["by_preferred_length"]["shorter"]["pairs"] == 1
    for name, want in (("judge", {"x", "y", "(none)"}), ("length", {"longer preferred", "shorter preferred"})):
        s = m["slices"][name]
        assert set(s) == want and sum(v["pairs"] for v in s.values()) == 4
        assert sum(v["accuracy"] * v["pairs"] for v in s.values()) == pytest.approx(m["accuracy"] * 4)
    assert s["shorter preferred"]["pairs"] == 1 and m["slices"]["judge"]["x"]["pairs"] == 2
    assert main([*argv, "--slice", "judge"]) == 0
    text = capsys.readouterr().out
    assert "length: the model" in text and "slice judge:" in text and "  x: accuracy" in text
    assert main([*argv, "--slice", "nope"]) == 2
    assert "no comparison carries a field 'nope'" in capsys.readouterr().err
    pytest.importorskip("matplotlib")
    assert main([*argv, "--report", str(tmp_path / "report")]) == 0
    png = (tmp_path / "report" / "length.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "length: the model" in (tmp_path / "report" / "summary.md").read_text()
