"""data/judgments.py: cycles, ranks from pairs, conflict counts."""

from rankrm.data.judgments import conflict_counts, depth_ranks, find_cycle, net_win_ranks


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
