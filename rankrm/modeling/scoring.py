"""Scoring text with a RewardModel: the methods score, score_ids, score_groups, score_group_ids, rank and
score_outputs, kept apart from the model's loading and forward (model.py). All end in batch_outputs, the one path
from a batch to the head's outputs; the reward is output 0."""

from __future__ import annotations

import torch

from rankrm.data.encode import TokenizedGroup
from rankrm.modeling.attention import layouts_for
from rankrm.modeling.batch import collate, collate_rows
from rankrm.modeling.heads import output_fields
from rankrm.modeling.planning import plan_batches, token_budget_batches
from rankrm.progress import with_progress


def batch_outputs(model, batch, cache=None) -> torch.Tensor:
    """The head's outputs (N, O) of a batch, reward_bias included: the one path from a batch to rewards (training,
    evaluation, scoring, serving). Output 0 is the reward.

    model: the RewardModel or its distributed wrapper; cache: a frozen.FrozenLayerCache, whose frozen layers then
    run only for sequences it has not seen."""
    return model(batch) if cache is None else cache.outputs(model, batch)


def batch_rewards(model, batch, cache=None) -> torch.Tensor:
    """Rewards (N,) of a batch: output 0 of batch_outputs."""
    return batch_outputs(model, batch, cache)[:, 0]


class Scoring:
    """RewardModel's scoring methods (a mixin: RewardModel(Scoring, nn.Module)); no state of its own."""

    @torch.no_grad()
    def score(
        self, prompts, completions, batch_tokens: int = 4096, progress: bool = False, return_truncated: bool = False
    ):
        """Rewards of (prompt, completion) pairs, batched by token budget and length-sorted; in input order.

        return_truncated: also return which inputs were cut to max_length (their prompt lost its start)."""
        ids, cut = self.tokenize(prompts, completions)
        out = self.score_ids(ids, batch_tokens, progress)
        return (out, cut) if return_truncated else out

    @torch.no_grad()
    def score_outputs(
        self, prompts, completions, batch_tokens: int = 4096, progress: bool = False, return_truncated: bool = False
    ):
        """Every output of (prompt, completion) pairs by name: {"reward": [...], "reward_std": [...] (an ensemble),
        name: [...] (each extra output of the head)}, lists in input order; "reward" equals `score`."""
        ids, cut = self.tokenize(prompts, completions)
        out = output_fields(self.id_outputs(ids, batch_tokens, progress), self.head_spec)
        return (out, cut) if return_truncated else out

    @torch.no_grad()
    def score_ids(self, ids: list[list[int]], batch_tokens: int = 4096, progress: bool = False) -> list[float]:
        """Rewards of sequences already tokenized as `tokenize` makes them (each ending with EOS, at most max_length
        long), batched by token budget and length-sorted; in input order."""
        return self.id_outputs(ids, batch_tokens, progress)[:, 0].tolist()

    @torch.no_grad()
    def id_outputs(self, ids: list[list[int]], batch_tokens: int = 4096, progress: bool = False) -> torch.Tensor:
        """The head's outputs (n, O) of tokenized sequences (as score_ids takes them), on the CPU, in input order."""
        was_training = self.training
        self.eval()
        out = torch.zeros((len(ids), self.head_spec.num_outputs))  # (n, O)
        device = next(self.parameters()).device
        batches = token_budget_batches([len(x) for x in ids], batch_tokens)
        for idx in with_progress(batches, "scoring", "batches", enabled=progress):
            b = collate_rows([ids[i] for i in idx], self.tokenizer.pad_token_id).to(device)
            out[idx] = batch_outputs(self, b).cpu()
        self.train(was_training)
        return out

    @torch.no_grad()
    def score_groups(
        self,
        prompts,
        completions: list[list[str]],
        batch_tokens: int = 4096,
        layout: str = "auto",
        return_truncated: bool = False,
    ):
        """Rewards of each prompt's completions (a list per prompt), each prompt encoded once per group where the
        layout cost model finds it cheaper (packed or kv); in input order."""
        if any(not cs for cs in completions):
            raise ValueError("a prompt has no completions to score. Fix: give each prompt at least one completion")
        flat_p = [p for p, cs in zip(prompts, completions, strict=True) for _ in cs]
        ids, cut = self.tokenize(flat_p, [c for cs in completions for c in cs])
        groups, flags, at = [], [], 0
        for cs in completions:
            groups.append(ids[at : at + len(cs)])
            flags.append(cut[at : at + len(cs)])
            at += len(cs)
        out = self.score_group_ids(groups, batch_tokens, layout)
        return (out, flags) if return_truncated else out

    @torch.no_grad()
    def score_group_ids(
        self, groups: list[list[list[int]]], batch_tokens: int = 4096, layout: str = "auto"
    ) -> list[list[float]]:
        """Rewards of groups already tokenized (each a prompt's completions, as `tokenize` makes them), each prompt
        encoded once per group where the layout cost model finds it cheaper; in input order."""
        return [o[:, 0].tolist() for o in self.group_outputs(groups, batch_tokens, layout)]

    @torch.no_grad()
    def group_outputs(
        self, groups: list[list[list[int]]], batch_tokens: int = 4096, layout: str = "auto"
    ) -> list[torch.Tensor]:
        """The head's outputs of tokenized groups (as score_group_ids takes them): one (K, O) CPU tensor a group."""
        groups = [TokenizedGroup(rows, [0] * len(rows)) for rows in groups]
        was_training = self.training
        self.eval()
        out: list[torch.Tensor] = [torch.zeros(0)] * len(groups)
        device = next(self.parameters()).device
        if layout == "auto" and "packed" not in layouts_for(self.hf.config._attn_implementation):
            layout = "padded"  # the only layout this attention implementation runs correctly
        lean = self.segment_aware
        for idx, how in plan_batches(groups, batch_tokens, layout, self.attention_per_token, segment_aware=lean):
            sub = [groups[i] for i in idx]
            b = collate(sub, self.tokenizer.pad_token_id, how, dense_mask=not lean, with_segments=lean).to(device)
            r = batch_outputs(self, b).cpu()  # (N, O): the groups' completions in order
            for i, g in zip(idx, sub):
                out[i], r = r[: len(g.ids)], r[len(g.ids) :]
        self.train(was_training)
        return out

    def rank(self, prompt, completions) -> tuple[list[float], list[int]]:
        """Rewards of one prompt's completions (the prompt encoded once) and their order, best first."""
        rewards = self.score_groups([prompt], [list(completions)])[0]
        order = sorted(range(len(completions)), key=lambda i: -rewards[i])
        return rewards, order
