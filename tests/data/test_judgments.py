"""data/judgments.py: cycles, ranks from pairs, conflict counts."""

import pytest

from rankrm.data.judgments import (
    check_conflicts,
    conflict_counts,
    depth_ranks,
    find_cycle,
    group_from_pairs,
    net_win_ranks,
)
from rankrm.errors import DataError, SettingsError


def test_find_cycle_reads_a_cycle_from_its_lowest_index_in_the_winners_direction():
    """1 > 2 > 0 > 1 is one 3-cycle whichever pair comes first, read from completion 0; 0 > 1 with 1 > 0 is a
    2-cycle; a cycle among 2, 3, 4 next to an order on 0, 1 starts at 2. A diamond 0 > {1, 2} > 3 > 4 has no
    cycle, and each completion's rank is its longest chain of winners (0 > 4 directly does not lift 4)."""
    assert find_cycle([(1, 2), (2, 0), (0, 1)]) == [0, 1, 2, 0]
    assert find_cycle([(2, 0), (0, 1), (1, 2)]) == [0, 1, 2, 0]
    assert find_cycle([(1, 0), (0, 1)]) == [0, 1, 0]
    assert find_cycle([(0, 1), (3, 4), (4, 2), (2, 3)]) == [2, 3, 4, 2]
    diamond = [(0, 1), (0, 2), (1, 3), (2, 3), (3, 4), (0, 4)]
    assert find_cycle(diamond) is None
    assert depth_ranks(6, diamond) == (0, 1, 1, 2, 3, 0)


def test_conflict_counts_and_net_win_ranks():
    """Pairs a > b (x2), b > a, b > c, c > d, d > b: one contradictory pair (a, b), 1 extra vote, and b > c > d > b
    is a cycle once the contradicted pair is set aside. Net wins: a 2 - 1 = +1, b 1 + 1 - 2 - 1 = -1, c 0, d 0 ->
    dense ranks a 0, c and d 1, b 2."""
    pairs, counts = [(0, 1), (1, 0), (1, 2), (2, 3), (3, 1)], [2, 1, 1, 1, 1]
    assert conflict_counts(pairs, counts) == {"repeated": 1, "contradictory": 1, "cyclic": 1}
    assert net_win_ranks(4, pairs, counts) == (0, 2, 1, 1)
    assert conflict_counts([(0, 1), (1, 2)]) == {"repeated": 0, "contradictory": 0, "cyclic": 0}


def test_group_from_pairs_keeps_only_what_a_ranking_cannot_state():
    """1 > 2, 0 > 1, 0 > 2 is the ranking 0 > 1 > 2 stated out of order: a plain group, its margins reordered to
    comparisons() (0,1), (0,2), (1,2): 2.0, 1.0, 0.5. 0 > 2 with 1 > 2 is the ranking (0, 0, 1), a tie on top.
    0 > 1 > 2 stated as two pairs leaves 0 > 2 unstated: the pairs are kept, ranks their depths (0, 1, 2)."""
    full = group_from_pairs("p", "abc", [(1, 2), (0, 1), (0, 2)], [0.5, 2.0, 1.0], "f.jsonl", 3)
    assert full.ranks == (0, 1, 2) and full.stated_pairs is None and full.margins == (2.0, 1.0, 0.5)
    assert full.source == "f.jsonl:3" and full.completions == ("a", "b", "c")
    tie = group_from_pairs("p", "abc", [(0, 2), (1, 2)], None, "f.jsonl", 3)
    assert tie.ranks == (0, 0, 1) and tie.stated_pairs is None
    chain = group_from_pairs("p", "abc", [(0, 1), (1, 2)], None, "f.jsonl", 3)
    assert (
        chain.ranks == (0, 1, 2) and chain.stated_pairs == ((0, 1), (1, 2)) and chain.comparisons() == [(0, 1), (1, 2)]
    )


def test_group_from_pairs_refuses_a_cycle_unless_votes_are_kept():
    """a > b > c > a: an error naming the completions; kept with a > b stated twice, ranked by net wins."""
    cycle = [(0, 1), (1, 2), (2, 0)]
    with pytest.raises(
        DataError, match=r"f.jsonl:4: field 'pairs': cyclic comparisons: completion 0 > completion 1 > completion 2"
    ):
        group_from_pairs("p", "abc", cycle, None, "f.jsonl", 4)
    kept = group_from_pairs("p", "abc", cycle, None, "f.jsonl", 4, counts=[2, 1, 1], conflicts="keep")
    # net wins a 2 - 1 = +1, b 1 - 2 = -1, c 1 - 1 = 0 -> ranks a 0, c 1, b 2
    assert kept.ranks == (0, 2, 1) and kept.stated_pairs == tuple(cycle) and kept.counts == (2, 1, 1)


def test_conflicts_policy_is_checked_by_name():
    assert [check_conflicts(c) for c in ("keep", "drop", "error")] == ["keep", "drop", "error"]
    with pytest.raises(SettingsError, match=r"conflicts 'vote' unknown. Fix: use keep"):
        check_conflicts("vote")
