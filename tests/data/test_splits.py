"""data/splits.py: held-out splits by prompt, seeded; overlap counts; the native writer."""

import pytest
from conftest import OASST_FLAT, OASST_TREES
from samples import SKY

from rankrm.data.groups import RankedGroup
from rankrm.data.readers import read_groups
from rankrm.data.splits import (
    group_digest,
    identical_prompts,
    overlap,
    overlap_keys,
    split_by_prompt,
    split_indices,
    write_native,
)
from rankrm.errors import DataError, SettingsError


def test_identical_prompts_across_files():
    a = [RankedGroup("p", ("a", "b"), (0, 1)), RankedGroup(SKY, ("a", "b"), (0, 1))]
    b = [RankedGroup([dict(m) for m in SKY], ("c", "d"), (0, 1)), RankedGroup("q", ("a", "b"), (0, 1))]
    assert identical_prompts(a, b) == 1


def test_split_by_prompt_never_puts_a_tree_on_both_sides():
    g = read_groups([OASST_TREES, OASST_FLAT])
    train, held = split_by_prompt(g, 0.2, seed=3)
    assert len(train) + len(held) == len(g)
    assert overlap(train, held) == 0
    assert not {x.tree for x in train} & {x.tree for x in held}
    assert split_by_prompt(g, 0.2, seed=3)[1] == held  # seeded
    assert split_by_prompt(g, 0.2, seed=4)[1] != held


def test_write_native_round_trips(tmp_path):
    g = read_groups(OASST_TREES)[:20]
    write_native(g, tmp_path / "n.jsonl")
    back = read_groups(tmp_path / "n.jsonl")
    assert [(x.prompt, x.completions, x.ranks) for x in back] == [(x.prompt, x.completions, x.ranks) for x in g]


def test_a_split_holds_out_whole_keys_by_the_seed_whatever_the_input_order():
    """Keys a a b c b d: 4 prompts, a fraction 0.5 holds out round(2) = 2 of them with all their groups; the keys
    are sorted before the seeded shuffle, so the same groups in another order hold out the same prompts."""
    keys = ["a", "a", "b", "c", "b", "d"]
    train, held = split_indices(keys, 0.5, seed=7)
    held_keys = {keys[i] for i in held}
    assert len(held_keys) == 2 and not held_keys & {keys[i] for i in train}
    assert sorted([*train, *held]) == list(range(6))
    assert [int(i) for i in held] == [i for i, k in enumerate(keys) if k in held_keys]  # in input order
    again = list(reversed(keys))
    assert {again[i] for i in split_indices(again, 0.5, seed=7)[1]} == held_keys
    picks = {frozenset(keys[i] for i in split_indices(keys, 0.5, seed=s)[1]) for s in range(20)}
    assert len(picks) > 1  # the seed chooses


def test_a_split_refuses_what_it_cannot_do():
    with pytest.raises(SettingsError, match=r"--eval-fraction must be in \(0, 1\), got 1.0"):
        split_indices(["a", "b"], 1.0, seed=0)
    with pytest.raises(DataError, match=r"d.jsonl: has fewer than 2 prompts"):
        split_indices(["a", "a"], 0.5, seed=0, source="d.jsonl")
    with pytest.raises(SettingsError, match=r"--eval-fraction 0.9 leaves no training prompts \(2 in all\)"):
        split_indices(["a", "b"], 0.9, seed=0)  # round(0.9 x 2) = 2 prompts held out


def test_group_digest_ignores_the_completions_order_and_nothing_else():
    a = RankedGroup("p", ("x", "y"), (0, 1))
    assert len(group_digest(a)) == 20
    assert group_digest(a) == group_digest(RankedGroup("p", ("y", "x"), (1, 0), source="f:9"))
    assert group_digest(a) != group_digest(RankedGroup("q", ("x", "y"), (0, 1)))
    assert group_digest(a) != group_digest(RankedGroup("p", ("x", "z"), (0, 1)))


def test_overlap_counts_held_out_groups_whose_conversation_is_in_training():
    """split_key: the tree, else the prompt's first message: t1 is on both sides once; "p" (a string) and a
    conversation opening with "p" share a key; "q" does not."""
    train = [RankedGroup("x", ("a", "b"), (0, 1), tree="t1"), RankedGroup("p", ("a", "b"), (0, 1))]
    held = [
        RankedGroup("y", ("a", "b"), (0, 1), tree="t1"),
        RankedGroup([{"role": "user", "content": "p"}, {"role": "assistant", "content": "."}], ("a", "b"), (0, 1)),
        RankedGroup("q", ("a", "b"), (0, 1)),
    ]
    assert overlap(train, held) == 2 and overlap_keys(["k", "k"], ["k", "j", "k"]) == 2
    assert identical_prompts(train, held) == 0  # a conversation is not the string "p"
