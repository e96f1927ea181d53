"""data/merge.py: one prompt's groups from several files merged into one, their votes added."""

from collections import Counter

from rankrm.data.groups import RankedGroup
from rankrm.data.merge import MARGINS_DROPPED, MERGED, judgment, merge_groups


def test_votes_of_one_group_from_two_files_add_up_in_the_first_files_order():
    """File 1 ranks a > b > c: (a,b), (a,c), (b,c) once each. File 2 lists b, a, c and ranks b first, a and c tied:
    b > a, b > c. In file 1's order that is (1,0) and (1,2): votes (0,1) 1, (0,2) 1, (1,2) 2, (1,0) 1. a > b and
    b > a contradict, so ranks come from net wins: a 1 + 1 - 1 = +1, b -1 + 2 + 1 = +2, c -1 - 2 = -3 -> (1, 0, 2)."""
    one = RankedGroup("p", ("a", "b", "c"), (0, 1, 2), source="one.jsonl:1", margins=(1.0, 2.0, 0.5))
    two = RankedGroup("p", ("b", "a", "c"), (0, 1, 1), source="two.jsonl:5", tree="t", subset="chat")
    notes = Counter()
    g = merge_groups([one, two], notes)
    assert g.completions == ("a", "b", "c") and g.source == "one.jsonl:1"
    assert g.stated_pairs == ((0, 1), (0, 2), (1, 2), (1, 0)) and g.counts == (1, 1, 2, 1)
    assert g.ranks == (1, 0, 2) and g.tree == "t" and g.subset == "chat"
    assert g.margins is None  # file 2 gave none: dropped, and counted
    assert notes == {MERGED: 1, MARGINS_DROPPED: 1}


def test_a_judgment_is_the_same_whatever_the_order_of_the_completions():
    a = RankedGroup("p", ("x", "y", "z"), (0, 1, 1))
    assert judgment(a) == judgment(RankedGroup("p", ("z", "x", "y"), (1, 0, 1)))
    assert judgment(a) == frozenset({(("x", "y"), 1), (("x", "z"), 1)})
    assert judgment(a) != judgment(RankedGroup("p", ("x", "y", "z"), (0, 1, 2)))
