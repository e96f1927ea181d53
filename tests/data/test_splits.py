"""data/splits.py: held-out splits by prompt, seeded; overlap counts; the native writer."""

from conftest import OASST_FLAT, OASST_TREES
from samples import SKY

from rankrm.data.groups import RankedGroup
from rankrm.data.readers import read_groups
from rankrm.data.splits import identical_prompts, overlap, split_by_prompt, write_native


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
