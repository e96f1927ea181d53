"""Reader of scored completions (UltraFeedback-like): ratings become ranks, the higher the better, equal ratings
tie."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from rankrm.data.attributes import count_rated, ultrafeedback_ratings
from rankrm.data.groups import RankedGroup, ReadReport, iter_records
from rankrm.data.validate import check_completions, check_number, check_prompt, require_fields
from rankrm.errors import DataError

TEXT_KEYS = ("response", "text", "completion", "content")
# UltraFeedback: the mean of the fine-grained ratings before overall_score, which is known to be unreliable
SCORE_KEYS = ("score", "rating", "fine-grained_score", "overall_score")


def _from_objects(comps: list[dict], path, line) -> tuple[list, list, str, tuple | None]:
    """(texts, scores, score field, ratings) from completion objects such as UltraFeedback's; ratings: each
    completion's fine-grained annotations as attributes (None when no completion has annotations)."""
    tkey = next((k for k in TEXT_KEYS if k in comps[0]), None)
    skey = next((k for k in SCORE_KEYS if any(k in c for c in comps)), None)
    if tkey is None or skey is None:
        missing = f"a text ({', '.join(TEXT_KEYS)})" if tkey is None else f"a score ({', '.join(SCORE_KEYS)})"
        raise DataError(
            path,
            line,
            "completions[0]",
            f"has no field for {missing}",
            'write completions as {"response": "...", "score": 4.5}',
            reason="completions: no text/score",
        )
    texts, scores = [], []
    for i, c in enumerate(comps):
        for key in (tkey, skey):
            if c.get(key) is None:
                raise DataError(
                    path,
                    line,
                    f"completions[{i}].{key}",
                    "is missing",
                    f"give every completion its {key}, or drop the record",
                    reason=f"completions: {key} missing",
                )
        texts.append(c[tkey])
        scores.append(check_number(c[skey], path, line, f"completions[{i}].{skey}"))
    ratings = None
    if any("annotations" in c for c in comps):
        ratings = tuple(
            ultrafeedback_ratings(c.get("annotations", {}), path, line, f"completions[{i}].annotations")
            for i, c in enumerate(comps)
        )
    return texts, scores, skey, ratings


def ranks_from_scores(scores) -> tuple[int, ...]:
    """Dense ranks from scores, the higher the better: [7, 9, 7, 3] -> (1, 0, 1, 2)."""
    levels = sorted(set(scores), reverse=True)
    return tuple(levels.index(s) for s in scores)


def iter_scored(
    path: Path, report: ReadReport | None = None, skip_invalid: bool = False, conflicts: str = "keep"
) -> Iterator[RankedGroup]:
    """Read scored completions: {"prompt" | "instruction", "completions": [str], "scores" | "ratings": [number]},
    or completions as objects {"response", "score" | "rating" | "fine-grained_score" | "overall_score"}, with
    UltraFeedback's fine-grained "annotations" read as rated attributes.

    Scores state one ranking per record, so `conflicts` has nothing to act on here (every reader takes it)."""
    report = report if report is not None else ReadReport()
    for line, obj in iter_records(path, report, skip_invalid):
        try:
            pkey = "instruction" if "prompt" not in obj and "instruction" in obj else "prompt"
            fix = 'write {"prompt": ..., "completions": [...], "scores": [...]}'
            require_fields(obj, (pkey, "completions"), path, line, fix)
            prompt = check_prompt(obj[pkey], path, line, pkey)
            comps = obj["completions"]
            if isinstance(comps, list) and comps and all(isinstance(c, dict) for c in comps):
                texts, scores, _, ratings = _from_objects(comps, path, line)
            else:
                ratings = None
                skey = "ratings" if "scores" not in obj and "ratings" in obj else "scores"
                require_fields(obj, (skey,), path, line, fix)
                raw = obj[skey]
                if not isinstance(raw, list):
                    raise DataError(
                        path,
                        line,
                        skey,
                        f"expected a list of numbers, got {type(raw).__name__}",
                        fix,
                        reason=f"{skey}: not a list",
                    )
                texts = comps
                if isinstance(comps, list) and len(raw) != len(comps):
                    raise DataError(
                        path,
                        line,
                        skey,
                        f"has {len(raw)} scores for {len(comps)} completions",
                        "give exactly one score per completion",
                        reason="scores of the wrong length",
                    )
                scores = [check_number(x, path, line, f"{skey}[{i}]") for i, x in enumerate(raw)]
            completions = check_completions(texts, path, line)
        except DataError as e:
            report.skip(e, skip_invalid)
            continue
        g = RankedGroup(prompt, completions, ranks_from_scores(scores), source=f"{path}:{line}", attributes=ratings)
        if not g.comparisons() and not any(ratings or ()):
            report.skipped["all completions tied: no comparison"] += 1
            continue
        count_rated(report, ratings)
        report.groups += 1
        yield g
