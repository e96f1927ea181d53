"""A run's data: the training and held-out stores (read, validated, split by prompt, prepared once), and what their
tokens say before training (counts, cut sequences, completions that read as the same tokens and why)."""

from __future__ import annotations

import contextlib
import logging
import random
from dataclasses import dataclass

import numpy as np

from rankrm.data.encode import TextEncoder
from rankrm.data.groups import ReadReport
from rankrm.data.prepare import open_data
from rankrm.data.splits import overlap_keys, split_indices
from rankrm.data.store import StoreView, default_cache
from rankrm.errors import DataError, SettingsError
from rankrm.modeling.model import RewardModel
from rankrm.training.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class Data:
    train: StoreView
    held: StoreView
    report: ReadReport


def load_data(cfg: TrainConfig, encoder: TextEncoder, first=contextlib.nullcontext) -> Data:
    """The training (and held-out) groups, read, validated and tokenized once into prepared stores (found again by
    their fingerprint), split by prompt; fails before any model loads. `first`: a context in which the main process
    prepares while the others wait (they then find its store)."""
    cache = cfg.data_cache or default_cache()
    opts = {
        "fmt": cfg.format,
        "conflicts": cfg.conflicts,
        "skip_invalid": cfg.skip_invalid,
        "num_proc": cfg.tokenize_processes,
        "what": "--model",
    }
    with first():
        store = open_data(cfg.train_data, encoder, cache, **opts)
        held_store = open_data(cfg.eval_data, encoder, cache, **opts) if cfg.eval_data else None
    report = store.report
    log.info(f"train data: {report.summary()}")
    if not store.manifest["comparisons"]:
        raise DataError(
            ", ".join(map(str, cfg.train_data)),
            None,
            None,
            f"gives no training comparison ({report.summary()})",
            "give ranked groups whose completions are not all tied (rated completions without a ranking train "
            "an --attributes model only beside ranked groups: the evaluation reads the reward's comparisons)",
        )
    keys = store.column("split_key")
    if held_store is not None:
        log.info(f"eval data: {held_store.report.summary()}")
        train_idx, held = np.arange(len(keys)), held_store.view()
        leaks = overlap_keys(keys, held.column("split_key"))
        if leaks:
            log.warning(f"warning: {leaks} held-out groups share a prompt or conversation with the training data")
    else:
        train_idx, held_idx = split_indices(keys, cfg.eval_fraction, cfg.seed, cfg.train_data[0])
        held = store.view(held_idx)
    if cfg.max_train_groups and cfg.max_train_groups < len(train_idx):
        rng = random.Random(cfg.seed)
        train_idx = train_idx[sorted(rng.sample(range(len(train_idx)), cfg.max_train_groups))]
        log.info(f"using {cfg.max_train_groups} of the training groups (--max-train-groups)")
    train = store.view(train_idx)
    for name, part, files in (("training", train, cfg.train_data), ("held-out", held, cfg.eval_data or cfg.train_data)):
        if not part.column("n_pairs").sum():
            raise DataError(
                ", ".join(map(str, files)),
                None,
                None,
                f"gives no {name} comparison (no groups, or every group tied)",
                "give ranked groups whose completions are not all tied",
            )
    n_pairs = int(train.column("n_pairs").sum())
    log.info(f"split by prompt: {len(train)} training groups ({n_pairs} comparisons), {len(held)} held out")
    check_objective(cfg, train)
    return Data(train, held, report)


def check_objective(cfg: TrainConfig, train: StoreView) -> None:
    """What the training groups hold against the objective: Plackett-Luce refuses groups whose stated comparisons
    are not those their ranks imply (votes that repeat or disagree, partial orders of pairwise records), naming how
    many and the fix; margins unused (--margin-scale 0) or asked for without any are said, never silent."""
    files = ", ".join(map(str, cfg.train_data))
    votes, stated = train.column("has_counts"), train.column("has_pairs")
    if cfg.objective == "plackett-luce" and stated.any():
        n_votes, n_partial = int(votes.sum()), int((stated & ~votes).sum())
        raise DataError(
            files,
            None,
            None,
            f"has {n_votes + n_partial} of {len(train)} training groups whose stated comparisons are not a ranking "
            f"({n_votes} with votes that repeat or disagree, {n_partial} stating only some pairs, as merged pairwise "
            "records do): Plackett-Luce is the likelihood of one whole ranking per group, and these give none",
            "train them with --objective pairwise (every vote and partial order counts there)"
            + (", or pass --conflicts drop (a repeated vote counted once)" if n_votes else ""),
        )
    with_margins = int(train.column("has_margins").sum())
    if with_margins and not cfg.margin_scale and cfg.objective == "pairwise":
        log.info(f"note: {with_margins} training groups give margins, unused (pass --margin-scale 1 to use them)")
    elif with_margins and cfg.objective == "plackett-luce":
        log.info(f"note: {with_margins} training groups give margins, which Plackett-Luce does not use")
    elif cfg.margin_scale and not with_margins:
        log.warning(f"warning: --margin-scale {cfg.margin_scale:g}, but no training group gives margins")
    elif cfg.margin_scale:
        log.info(f"margins: {with_margins} of {len(train)} training groups give them, scaled by {cfg.margin_scale:g}")


# -- model ------------------------------------------------------------------------------------------------------


def check_tokens(model: RewardModel, data: Data) -> None:
    """Token counts from the stores; groups whose completions read as the same tokens are named with their cause
    (the tokenizer, or the cut to --max-length), and an error when no group is left to compare."""
    cut = [int(part.column("cut").sum()) for part in (data.train, data.held)]
    log.info(
        f"tokens: {int(data.train.lengths.sum())} training, {int(data.held.lengths.sum())} held out; prompts cut "
        f"from the left to fit --max-length: {cut[0]} training and {cut[1]} held-out completions"
    )
    same, by_cut = (
        a + b for a, b in zip(*(identical_completions(p, model.max_length) for p in (data.train, data.held)))
    )
    n = model.max_length
    tokenizer_cause = "the tokenizer maps different completions to the same ids (nothing was cut)"
    if same + by_cut == len(data.train) + len(data.held):
        if not by_cut:
            raise SettingsError(
                f"{tokenizer_cause} in every group: there is nothing to compare. Fix: use the model's own "
                "tokenizer, one whose vocabulary covers the data's text"
            )
        raise SettingsError(
            f"--max-length {n} cuts the completions of {by_cut} groups to the same tokens ({same} more: "
            f"{tokenizer_cause}): there is nothing to compare. Fix: raise --max-length"
        )
    if same:
        log.warning(f"warning: {same} groups have completions identical after tokenization: {tokenizer_cause}")
    if by_cut:
        log.warning(f"warning: {by_cut} groups have completions made identical by --max-length {n}")


def identical_completions(view: StoreView, max_length: int) -> tuple[int, int]:
    """(groups with completions identical as tokenized, groups whose identical completions the cut to max_length
    made so): a duplicate shorter than max_length, or in a group with nothing cut, was never cut. (A duplicate
    exactly max_length long in a group where another completion was cut counts as cut.)"""
    blind = np.flatnonzero(view.column("blind"))
    cut = view.column("cut")[blind]
    same = int((cut == 0).sum())
    for i in blind[cut > 0]:  # only these need their tokens read
        rows = [tuple(r) for r in view[int(i)].ids]
        dupes = [r for r in rows if rows.count(r) > 1]
        same += any(len(r) < max_length for r in dupes)
    return same, len(blind) - same
