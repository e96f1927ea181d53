"""Padding waste on the shipped OpenAssistant rankings: the share of processed token slots that are padding.

Plans one training epoch exactly as `rankrm train` does (rankrm.modeling.planning.epoch_steps, then plan_batches and
rankrm.modeling.batch.collate for each step's micro-batches) and the evaluation batches (plan_batches over the held-out groups),
for each layout and step composition, with the default backbone's tokenizer and chat template. Counts only: no
forward pass runs, so this takes seconds.

    python -m benchmarks.padding
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks._results import save
from rankrm.data.encode import tokenize_groups
from rankrm.data.readers import read_groups
from rankrm.data.splits import split_by_prompt
from rankrm.modeling.batch import collate
from rankrm.modeling.hub import DEFAULT_MODEL
from rankrm.modeling.model import RewardModel
from rankrm.modeling.planning import epoch_steps, plan_batches
from rankrm.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
DATA = [str(ROOT / "rankrm/shipped/oasst_en_100_tree.jsonl"), str(ROOT / "rankrm/shipped/oasst1_en_validation.jsonl")]


def count(groups, batches, pad_id) -> tuple[int, int, int]:
    """(token slots, padding slots, forward passes) over the planned batches."""
    slots = pad = 0
    for idx, layout in batches:
        b = collate([groups[i] for i in idx], pad_id, layout)
        slots, pad = slots + b.slots, pad + b.slots - b.real_tokens
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
            for window in (0, d.length_sort_window):
                steps = epoch_steps(lengths, batch_size, seed=0, epoch=0, sort_window=window)
                slots = pad = passes = 0
                for st in steps:
                    groups = [tok_train[i] for i in st]
                    s, q, n = count(groups, plan_batches(groups, d.micro_batch_tokens, layout, apt, kv), pad_id)
                    slots, pad, passes = slots + s, pad + q, passes + n
                ev = count(tok_eval, plan_batches(tok_eval, d.eval_batch_tokens, layout, apt, kv), pad_id)
                real = sum(g.tokens for g in tok_train)
                r = {
                    "max_length": max_length,
                    "batch_size": batch_size,
                    "settings": where,
                    "layout": layout,
                    "length_sort_window": window,
                    "train_slots": slots,
                    "train_padding": pad,
                    "train_padding_share": pad / slots,
                    "train_passes": passes,
                    "completion_tokens": real,
                    "eval_slots": ev[0],
                    "eval_padding": ev[1],
                    "eval_padding_share": ev[1] / ev[0],
                }
                results.append(r)
                rows.append(
                    f"| {max_length} | {batch_size} | {layout} | {window} | {slots:,} | "
                    f"{100 * pad / slots:.1f}% | {passes} | {slots / real:.2f} | {100 * ev[1] / ev[0]:.1f}% |"
                )
    head = (
        f"# Padding waste on the shipped OpenAssistant data\n\n{Path(args.model).name} tokenizer and chat template; "
        f"{len(train_groups)} training / {len(held)} held-out prompts (split seed 0, 20% held out); one training "
        f"epoch planned as `rankrm train` plans it (micro-batches of {d.micro_batch_tokens} padded tokens), and "
        f"the evaluation batches ({d.eval_batch_tokens} tokens).\n\n"
        "Token slots: what the forward passes process (rows x row length). Slots per completion token: slots "
        "over the tokens of every (prompt + completion) row, so below 1 when packing forwards each prompt once.\n\n"
        "| max length | groups per step | layout | length sort window | training token slots | padding share "
        "(training) | forward passes | slots per completion token | padding share (evaluation) |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    save(args.out, "padding", head, rows, results, "padding")


if __name__ == "__main__":
    main()
