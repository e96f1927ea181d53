"""The next step's batches collated in a background thread (training/prefetch.py) are the batches the loop would
collate itself, and a run with the thread gives the model a run without it gives, to the last bit."""

import random

import pytest
import torch
from conftest import synthetic_groups, write_jsonl
from safetensors.torch import load_file

from rankrm.data.encode import TokenizedGroup
from rankrm.modeling.planning import epoch_steps
from rankrm.training import loop
from rankrm.training.config import TrainConfig
from rankrm.training.prefetch import EpochPlan, Prefetcher, StepBatches, StepRecipe
from rankrm.training.run import train


def groups(n: int, seed: int = 0) -> list[TokenizedGroup]:
    """n groups of 2-5 completions sharing a prompt of 0-12 tokens, of mixed lengths."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = [rng.randint(3, 99) for _ in range(rng.randint(0, 12))]
        k = rng.randint(2, 5)
        rows = [prompt + [rng.randint(3, 99) for _ in range(rng.randint(1, 9))] + [2] for _ in range(k)]
        out.append(TokenizedGroup(rows, rng.sample(range(k), k)))
    return out


def same_batch(a, b) -> bool:
    """Every tensor and list of two batches equal (the kv layout's prompt pass too)."""
    for name in ("input_ids", "attention_mask", "position_ids", "end_index", "ranks", "group_index"):
        if not torch.equal(getattr(a, name), getattr(b, name)):
            return False
    if (a.prompt is None) != (b.prompt is None):
        return False
    if a.prompt is not None and not torch.equal(a.prompt.attention_mask, b.prompt.attention_mask):
        return False
    return a.sequences == b.sequences and a.layout == b.layout and a.real_tokens == b.real_tokens


@pytest.mark.parametrize("layout", ["auto", "packed", "kv"])
def test_prefetched_steps_are_the_steps_collated_inline(layout):
    """Over two epochs of 7 steps of 3 units (21 units: the last step of each epoch full), each step fetched
    from the thread has the plan and the batches a fresh inline prepare makes, and the epochs' steps are
    epoch_steps' own."""
    units = groups(21)
    lengths = [sum(len(r) for r in g.ids) for g in units]
    plan = EpochPlan(lengths, step_size=3, steps_per_epoch=7, seed=5, sort_window=2)
    recipe = StepRecipe(micro_batch_tokens=60, layout=layout, attention_per_token=0.05, pad_id=0)
    cpu = torch.device("cpu")

    def prepare(step):
        return recipe.prepare([units[j] for j in plan.step(step)], cpu)

    with Prefetcher(prepare, last=14) as ahead:
        for step in range(14):
            got = ahead.get(step)
            epoch, i = divmod(step, 7)
            ids = epoch_steps(lengths, 3, 5, epoch, 2)[i]
            assert plan.step(step) == ids
            want = recipe.prepare([units[j] for j in ids], cpu)
            assert got.micro == want.micro and len(got.batches) == len(want.batches) > 0
            assert all(same_batch(a, b) for a, b in zip(got.batches, want.batches))
            assert got.waited <= got.prepare_seconds + 1.0
    assert any(len(g.micro) > 1 for g in [prepare(s) for s in range(7)])  # the budget splits some steps


def test_an_error_in_the_thread_comes_out_of_get_for_its_step():
    recipe = StepRecipe(100, "padded", 0.05, 0)

    def prepare(step):
        if step == 2:
            raise ValueError("step 2 cannot be collated")
        return StepBatches([([step], "padded")], [], recipe)

    with Prefetcher(prepare, last=4) as ahead:
        assert [ahead.get(s).micro[0][0] for s in (0, 1)] == [[0], [1]]  # step 2 is being prepared meanwhile
        with pytest.raises(ValueError, match="step 2 cannot"):
            ahead.get(2)


def test_a_step_prefetched_by_another_recipe_is_refused():
    units = groups(4)
    made = StepRecipe(100, "padded", 0.05, 0).prepare(units, torch.device("cpu"))
    model = torch.nn.Linear(1, 1)
    with pytest.raises(RuntimeError, match="prefetched as"):
        loop.backward_step(
            model, units, 0.25, micro_batch_tokens=100, layout="packed", attention_per_token=0.05, pad_id=0,
            prepared=made,
        )  # fmt: skip


class Inline:
    """The loop without the thread: backward_step plans and collates each step itself, as before prefetch.py."""

    def get(self, step):
        return None


def test_training_with_the_thread_equals_training_without_it(model_dirs, tmp_path, monkeypatch):
    """Same config and seed: bit-identical weights and held-out figures, kv and padded micro-batches (auto) over
    two epochs; then the frozen-layer cache path (packed/padded only) likewise."""
    train_file = write_jsonl(tmp_path / "train.jsonl", synthetic_groups(48, 1))
    eval_file = write_jsonl(tmp_path / "eval.jsonl", synthetic_groups(12, 2))
    base = dict(
        model=str(model_dirs["llama-chat"]),
        train_data=[str(train_file)],
        eval_data=[str(eval_file)],
        epochs=2,
        batch_size=8,
        micro_batch_tokens=300,
        learning_rate=3e-3,
        max_length=64,
        seed=0,
        plots=False,
    )
    for name, kw in {"full": dict(train_layers=-1), "frozen": dict(train_layers=1, cache_frozen=True)}.items():
        runs = {}
        for how in ("thread", "inline"):
            with monkeypatch.context() as m:
                if how == "inline":
                    m.setattr(loop, "step_prefetcher", lambda *a: Inline())
                runs[how] = train(TrainConfig(**base, **kw, output_dir=str(tmp_path / f"{name}-{how}")))
        a, b = (load_file(str(tmp_path / f"{name}-{how}" / "model.safetensors")) for how in ("thread", "inline"))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[n], b[n]) for n in a), name
        assert runs["thread"]["after"] == runs["inline"]["after"]
        assert runs["thread"]["after"]["pairs"] > 0
