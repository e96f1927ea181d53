"""`rankrm data inspect`: what a data set holds (groups, K, comparisons, ties, duplicates, lengths, tokens)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from rankrm.data.encode import TextEncoder
from rankrm.data.groups import RankedGroup, ReadReport
from rankrm.data.readers import detect_format, read_groups
from rankrm.data.splits import identical_prompts, overlap


def length_stats(values) -> dict:
    """min, median, mean, 95th percentile and max of a list of lengths (zeros when empty)."""
    a = np.asarray(list(values), dtype=float)
    if a.size == 0:
        return {"min": 0, "median": 0, "mean": 0, "p95": 0, "max": 0}
    return {
        "min": int(a.min()),
        "median": float(np.median(a)),
        "mean": round(float(a.mean()), 1),
        "p95": float(np.percentile(a, 95)),
        "max": int(a.max()),
    }


def prompt_chars(prompt) -> int:
    """Characters of a prompt's text (the contents of its messages, without a chat template)."""
    return len(prompt) if isinstance(prompt, str) else sum(len(m["content"]) for m in prompt)


def token_stats(groups: list[RankedGroup], encoder: TextEncoder, name: str) -> dict:
    """Token lengths under an encoder's template and tokenizer, and what its length policy would cut.

    The policy is TextEncoder.tokenize's: a row (prompt + completion + EOS) longer than max_length loses the
    start of its prompt; the EOS is never cut; nothing is dropped. A completion longer than max_length by itself
    loses its own start as well (the prompt is cut away entirely). Only the tokenizer loads, never the weights."""
    limit = encoder.max_length
    prompts = [g.prompt for g in groups for _ in g.completions]
    completions = [c for g in groups for c in g.completions]
    encoder.max_length = 1 << 62  # full lengths; the cut is counted below with the same rule as tokenize's
    rows, _ = encoder.tokenize(prompts, completions)
    encoder.max_length = limit
    unique = {id(g.prompt): encoder.render_prompt(g.prompt) for g in groups}
    prompt_ids = dict(zip(unique, encoder.tokenizer(list(unique.values()), add_special_tokens=False)["input_ids"]))
    p_len = [len(prompt_ids[id(g.prompt)]) for g in groups for _ in g.completions]
    lengths = [len(r) for r in rows]
    c_len = [n - p for n, p in zip(lengths, p_len)]
    cut = [n > limit for n in lengths]
    at, groups_cut = 0, 0
    for g in groups:
        groups_cut += any(cut[at : at + g.k])
        at += g.k
    return {
        "model": name,
        "max_length": limit,
        "sequence_tokens": length_stats(lengths),
        "prompt_tokens": length_stats(p_len[i] for i in _first_of_each(groups)),
        "completion_tokens": length_stats(c_len),
        "truncated_completions": int(sum(cut)),
        "groups_with_truncation": groups_cut,
        "completions_cut_into": int(sum(c > limit for c in c_len)),
        "dropped": 0,
    }


def _first_of_each(groups):
    at = 0
    for g in groups:
        yield at
        at += g.k


def describe_groups(groups: list[RankedGroup], report: ReadReport) -> dict:
    """Counts and length statistics of a list of groups, with what the reader skipped and noted."""
    k_hist = Counter(g.k for g in groups)
    tied = sum(
        1
        for g in groups
        if g.stated_pairs is None
        for i in range(g.k)
        for j in range(i + 1, g.k)
        if g.ranks[i] == g.ranks[j]
    )
    texts = Counter(c for g in groups for c in set(g.completions))
    return {
        "records": report.records,
        "groups": len(groups),
        "skipped": dict(sorted(report.skipped.items())),
        "notes": dict(sorted(report.notes.items())),
        "k_histogram": dict(sorted(k_hist.items())),
        "comparisons": sum(len(g.comparisons()) for g in groups),
        "votes": sum(sum(g.votes()) for g in groups),
        "subsets": dict(sorted(Counter(g.subset for g in groups if g.subset is not None).items())),
        "partial_order_groups": sum(1 for g in groups if g.stated_pairs is not None),
        "tied_pairs": tied,
        "groups_with_ties": sum(1 for g in groups if g.stated_pairs is None and len(set(g.ranks)) < g.k),
        "groups_with_margins": sum(1 for g in groups if g.margins is not None),
        "completions": sum(g.k for g in groups),
        "completions_in_several_groups": sum(1 for n in texts.values() if n > 1),
        "prompt_turns": length_stats(1 if isinstance(g.prompt, str) else len(g.prompt) for g in groups),
        "prompt_chars": length_stats(prompt_chars(g.prompt) for g in groups),
        "completion_chars": length_stats(len(c) for g in groups for c in g.completions),
    }


def describe_data(
    paths,
    fmt: str = "auto",
    skip_invalid: bool = False,
    encoder: TextEncoder | None = None,
    model: str | None = None,
    against=None,
    conflicts: str = "keep",
) -> dict:
    """Read files as `rankrm train` would and describe them; with an encoder (the tokenizer of `model`), token
    lengths and truncation too."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    report = ReadReport()
    groups = read_groups(paths, fmt, report, skip_invalid, conflicts)
    out = {
        "files": [str(p) for p in paths],
        "format": {str(p): detect_format(p, skip_invalid) if fmt == "auto" else fmt for p in paths},
    }
    out.update(describe_groups(groups, report))
    if encoder is not None:
        out["tokens"] = token_stats(groups, encoder, model or encoder.tokenizer.name_or_path)
    if against:
        other = read_groups(against, fmt, ReadReport(), skip_invalid, conflicts)
        out["against"] = {
            "files": [str(p) for p in against],
            "groups": len(other),
            "identical_prompts": identical_prompts(other, groups),
            "shared_conversations": overlap(other, groups),
        }
    return out


def _stats_line(s: dict) -> str:
    return f"min {s['min']}, median {s['median']:g}, mean {s['mean']:g}, p95 {s['p95']:g}, max {s['max']}"


def format_description(d: dict) -> str:
    """The description as lines of text."""
    fmts = ", ".join(f"{p} ({f})" for p, f in d["format"].items())
    lines = [
        f"data: {fmts}",
        f"records: {d['records']}  groups: {d['groups']}  comparisons: {d['comparisons']} "
        f"({d['votes']} votes)  completions: {d['completions']}",
        "K histogram: " + ", ".join(f"K={k}: {n}" for k, n in d["k_histogram"].items()),
        f"ties: {d['tied_pairs']} tied pairs in {d['groups_with_ties']} groups;  partial orders: "
        f"{d['partial_order_groups']} groups state only some pairs;  margins: {d['groups_with_margins']} groups",
        f"duplicates: {d['completions_in_several_groups']} completion texts appear in more than one group",
    ]
    lines += [
        "skipped: " + ("none" if not d["skipped"] else "; ".join(f"{n} {reason}" for reason, n in d["skipped"].items()))
    ]
    lines += [f"note: {n} {note}" for note, n in d["notes"].items()]
    lines += [
        f"prompt turns: {_stats_line(d['prompt_turns'])}",
        f"prompt characters: {_stats_line(d['prompt_chars'])}",
        f"completion characters: {_stats_line(d['completion_chars'])}",
    ]
    if "tokens" in d:
        t = d["tokens"]
        lines += [
            f"tokens ({t['model']}, max length {t['max_length']}):",
            f"  prompt + completion + EOS: {_stats_line(t['sequence_tokens'])}",
            f"  prompt: {_stats_line(t['prompt_tokens'])}",
            f"  completion: {_stats_line(t['completion_tokens'])}",
            f"  truncated: {t['truncated_completions']} completions in {t['groups_with_truncation']} groups "
            f"lose the start of their prompt ({t['completions_cut_into']} of them the start of the completion "
            f"too); EOS never cut; dropped: {t['dropped']}",
        ]
    if "against" in d:
        a = d["against"]
        lines += [
            f"against {', '.join(a['files'])} ({a['groups']} groups): {a['identical_prompts']} groups have an "
            f"identical prompt there, {a['shared_conversations']} share a conversation (tree or first message)"
        ]
    return "\n".join(lines)
