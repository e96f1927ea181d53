"""Padding waste on the shipped OpenAssistant rankings: the share of processed token slots that are padding.

Plans one training epoch exactly as `rankrm train` does (rankrm.train.epoch_steps, then plan_batches and
collate_groups for each step's micro-batches) and the evaluation batches (plan_batches over the held-out groups),
for each layout and step composition, with the default backbone's tokenizer and chat template. Counts only: no
forward pass runs, so this takes seconds.

    python benchmarks/padding.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rankrm.batching import collate_groups, padding_share, plan_batches, tokenize_groups  # noqa: E402
from benchmarks._results import save  # noqa: E402
from rankrm.config import TrainConfig  # noqa: E402
from rankrm.groups import split_by_prompt  # noqa: E402
from rankrm.model import DEFAULT_MODEL, RewardModel  # noqa: E402
from rankrm.readers import read_groups  # noqa: E402
from rankrm.train import epoch_steps  # noqa: E402

DATA = [str(ROOT / "rankrm/shipped/oasst_en_100_tree.jsonl"), str(ROOT / "rankrm/shipped/oasst1_en_validation.jsonl")]


def count(groups, batches, pad_id) -> tuple[int, int, int]:
    """(token slots, padding slots, forward passes) over the planned batches."""
    slots = pad = 0
    for idx, layout in batches:
        s, p = padding_share(collate_groups([groups[i] for i in idx], pad_id, layout=layout))
        slots, pad = slots + s, pad + p
    return slots, pad, len(batches)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args()
    d = TrainConfig(train_data=DATA)  # the defaults
    # (max length, groups per step, whose settings, whether kv may be chosen: not with the demo's frozen-layer cache)
    settings = [(512, d.batch_size, "rankrm train defaults", True), (160, 8, "configs/demo.yaml", False)]
    model = RewardModel.from_pretrained(args.model)
    apt, pad_id = model.attention_per_token, model.tokenizer.pad_token_id
    train_groups, held = split_by_prompt(read_groups(DATA), 0.2, 0)
    rows, results = [], []
    for max_length, batch_size, where, kv in settings:
        model.max_length = max_length
        tok_train, _ = tokenize_groups(model, train_groups)
        tok_eval, _ = tokenize_groups(model, held)
        lengths = [sum(len(r) for r in g.ids) for g in tok_train]
        for layout in ("padded", "packed", "auto"):
            for buckets in (0, 16):
                steps = epoch_steps(lengths, batch_size, seed=0, epoch=0, buckets=buckets)
                slots = pad = passes = 0
                for st in steps:
                    groups = [tok_train[i] for i in st]
                    s, q, n = count(groups, plan_batches(groups, d.micro_batch_tokens, layout, apt, kv), pad_id)
                    slots, pad, passes = slots + s, pad + q, passes + n
                ev = count(tok_eval, plan_batches(tok_eval, d.eval_batch_tokens, layout, apt, kv), pad_id)
                real = sum(g.tokens for g in tok_train)
                r = {"max_length": max_length, "batch_size": batch_size, "settings": where, "layout": layout,
                     "length_buckets": buckets, "train_slots": slots, "train_padding": pad,
                     "train_padding_share": pad / slots, "train_passes": passes, "completion_tokens": real,
                     "eval_slots": ev[0], "eval_padding": ev[1], "eval_padding_share": ev[1] / ev[0]}
                results.append(r)
                rows.append(f"| {max_length} | {batch_size} | {layout} | {buckets} | {slots:,} | "
                            f"{100 * pad / slots:.1f}% | {passes} | {slots / real:.2f} | {100 * ev[1] / ev[0]:.1f}% |")
    head = (f"# Padding waste on the shipped OpenAssistant data\n\n{Path(args.model).name} tokenizer and chat template; "
            f"{len(train_groups)} training / {len(held)} held-out prompts (split seed 0, 20% held out); one training "
            f"epoch planned as `rankrm train` plans it (micro-batches of {d.micro_batch_tokens} padded tokens), and "
            f"the evaluation batches ({d.eval_batch_tokens} tokens).\n\n"
            "Token slots: what the forward passes process (rows x row length). Slots per completion token: slots "
            "over the tokens of every (prompt + completion) row, so below 1 when packing forwards each prompt once.\n\n"
            "| max length | groups per step | layout | length buckets | training token slots | padding share "
            "(training) | forward passes | slots per completion token | padding share (evaluation) |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    save(args.out, "padding", head, rows, results, "padding.py")


if __name__ == "__main__":
    main()
