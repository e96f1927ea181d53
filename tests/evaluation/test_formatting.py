"""evaluation/formatting.py: the metrics as the exact lines a training log and `rankrm eval` print."""

from rankrm.evaluation.formatting import format_length, format_metrics, format_report

BASE = {"accuracy": 0.75, "accuracy_ci95": (0.6, 0.9), "log_loss": 0.5, "groups": 3, "pairs": 4}


def test_the_summary_line_rounds_accuracy_to_4_digits_and_its_interval_to_3():
    assert format_metrics(BASE) == "accuracy 0.7500 [0.600, 0.900]  log loss 0.5000  (3 prompts, 4 pairs)"
    assert format_report(BASE) == format_metrics(BASE)  # nothing else measured: the one line


def test_the_report_prints_each_block_the_data_allowed_and_n_a_for_what_it_did_not():
    m = {
        **BASE,
        "top1_accuracy": 0.5,
        "kendall_tau_b": None,
        "ranked_groups": 2,
        "top1_reward_gap": -0.25,
        "accuracy_votes": 0.8,
        "accuracy_majority": None,
        "majority_pairs": 3,
        "split_pairs": 1,
        "calibration": {
            "ece": 0.05,
            "temperature": 1.25,
            "log_loss_at_temperature": 0.45,
            "ece_at_temperature": None,
            "reliability": [{"bin": (0.5, 0.75), "confidence": 0.6, "accuracy": 0.625, "votes": 8.0}],
        },
        "subsets": {"chat": {"accuracy": 1.0, "groups": 1, "pairs": 2}},
        "subset_mean": 1.0,
        "sections": {"chat": 0.9, "safety": 0.8},
        "score": 0.85,
        "ensemble": None,
        "slices": {"source": {"a": {"accuracy": 0.5, "log_loss": None, "longer_wins": 1.0, "pairs": 2}}},
    }
    assert format_report(m).splitlines() == [
        "accuracy 0.7500 [0.600, 0.900]  log loss 0.5000  (3 prompts, 4 pairs)",
        "ranking (2 groups with K >= 3): Kendall tau-b n/a  top-1 accuracy 0.5000  reward gap of the model's pick "
        "to the humans' best -0.2500",
        "votes: accuracy against every vote 0.8000, against each pair's majority n/a (3 pairs; 1 split evenly, "
        "left out)",
        "calibration: ECE 0.0500  temperature 1.25 (at it: log loss 0.4500, ECE n/a)",
        "  P 0.50-0.75: confidence 0.600  accuracy 0.625  (8 votes)",
        "subsets (mean accuracy 1.0000):",
        "  chat: accuracy 1.0000  (1 prompts, 2 pairs)",
        "sections: chat 0.9000  safety 0.8000  score 0.8500",
        "slice source:",
        "  a: accuracy 0.5000  log loss n/a  longer wins 1.0000  (2 pairs)",
    ]


def test_the_length_block_names_its_unit_and_ends_with_the_warning():
    length = {
        "by_preferred_length": {"shorter": {"accuracy": 0.25, "pairs": 4}, "longer": {"accuracy": None, "pairs": 0}},
        "correlation": {"spearman": 0.5, "spearman_per_prompt": None, "prompts": 3},
        "unit": "chars",
        "longer_wins_tokens": 0.6,
        "longer_wins_chars": 0.625,
        "length_matched": [{"log_ratio": (0.0, 0.25), "accuracy": 0.5, "longer_wins": None, "pairs": 2}],
        "warning": "warning: the model does not beat the longer-wins baseline",
    }
    assert format_length(length, 0.75) == [
        "length: the model 0.7500; the longer completion wins (no model) 0.6000 by tokens, 0.6250 by characters",
        "  the model where the preferred completion (characters) is shorter 0.2500 (4 pairs), longer n/a (0 pairs)",
        "  Spearman of reward with length 0.500 over completions, n/a mean per prompt (3 prompts)",
        "  length-matched: the model and the longer-wins baseline on pairs binned by |log length ratio|",
        "    0.00-0.25: the model 0.5000  longer wins n/a  (2 pairs)",
        "warning: the model does not beat the longer-wins baseline",
    ]
    assert format_report({**BASE, "length": length}).splitlines()[1:] == format_length(length, 0.75)
