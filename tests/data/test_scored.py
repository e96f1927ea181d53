"""data/scored.py: scored completions (UltraFeedback's objects too) become ranks with ties."""

from conftest import write_jsonl
from samples import SCORED, ULTRAFEEDBACK, read

from rankrm.data.readers import detect_format
from rankrm.data.scored import ranks_from_scores


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
