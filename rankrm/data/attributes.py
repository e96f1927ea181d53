"""Rated attributes: each completion's ratings by name (helpfulness, correctness, ...), read from the layouts that
carry them, checked with a DataError naming the field, and the reader of rated single completions.

A group's `attributes` is one dict per completion, name -> rating; a rating not given is absent from its dict (a
mask, not a zero). The layouts:

- native records: "attributes": [{"helpfulness": 3, ...}, ...], one object (or null) per completion;
- rated records, one completion each: {"prompt" | "instruction", "completion" | "response", "scores": {name:
  number}}, or HelpSteer2's columns (prompt, response, helpfulness, correctness, coherence, complexity, verbosity);
- UltraFeedback: completions[i].annotations = {name: {"Rating": "4", ...}} ("N/A" is a missing rating);
- OpenAssistant: each message's labels = {"name": [...], "value": [...], "count": [...]} (the mean of `count`
  annotators' values; a label with count 0 is missing)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from rankrm.data.groups import RankedGroup, ReadReport, iter_records
from rankrm.data.validate import check_number, check_prompt
from rankrm.errors import DataError

HELPSTEER = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
PROMPT_KEYS = ("prompt", "instruction")
COMPLETION_KEYS = ("completion", "response")
MISSING = ("N/A", "n/a", "")  # UltraFeedback writes a rating it could not give as "N/A"
RATED = "completions with rated attributes"  # the ReadReport note: how many completions carry ratings


def check_ratings(value, path, line, name: str) -> dict[str, float]:
    """One completion's ratings: an object of name -> finite number (null: not rated); {} for null."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DataError(
            path,
            line,
            name,
            f"expected an object of attribute ratings, got {type(value).__name__}",
            'write {"helpfulness": 3, "correctness": 4, ...} (numbers; null for a rating not given)',
            reason="attributes: not an object",
        )
    out = {}
    for key, v in value.items():
        if v is None:
            continue
        if not isinstance(key, str) or not key:
            raise DataError(path, line, name, f"has an attribute named {key!r}", "name every attribute")
        out[key] = check_number(v, path, line, f"{name}.{key}" if name else key)
    return out


def check_attributes(value, k: int, path, line, name: str = "attributes") -> tuple[dict[str, float], ...]:
    """A native record's "attributes": one ratings object (or null) per completion, in the completions' order."""
    if not isinstance(value, list) or len(value) != k:
        got = f"{len(value)} entries" if isinstance(value, list) else type(value).__name__
        raise DataError(
            path,
            line,
            name,
            f"expected a list of {k} ratings objects, one per completion, got {got}",
            'give one object per completion, e.g. [{"helpfulness": 3}, {"helpfulness": 1}] (null: not rated)',
            reason="attributes of the wrong length",
        )
    return tuple(check_ratings(v, path, line, f"{name}[{i}]") for i, v in enumerate(value))


def _rating(value, path, line, name: str) -> float | None:
    """An UltraFeedback rating: a number or a numeric string; "N/A" is missing."""
    if isinstance(value, str):
        if value.strip() in MISSING:
            return None
        try:
            value = float(value)
        except ValueError:
            raise DataError(
                path,
                line,
                name,
                f"expected a number, got {value[:40]!r}",
                'give the rating as a number or a numeric string ("N/A" when not rated)',
                reason="attributes: not a number",
            ) from None
    return check_number(value, path, line, name)


def ultrafeedback_ratings(annotations, path, line, name: str) -> dict[str, float]:
    """UltraFeedback's annotations of one completion: {name: {"Rating": ...}} (or a list of such, averaged)."""
    if not isinstance(annotations, dict):
        raise DataError(
            path,
            line,
            name,
            f"expected an object of annotations, got {type(annotations).__name__}",
            'give {"helpfulness": {"Rating": "4"}, ...}',
            reason="annotations: not an object",
        )
    out = {}
    for attr, ann in annotations.items():
        items = ann if isinstance(ann, list) else [ann]
        values = []
        for j, a in enumerate(items):
            where = f"{name}.{attr}" + (f"[{j}]" if isinstance(ann, list) else "")
            raw = a.get("Rating") if isinstance(a, dict) else a
            r = _rating(raw, path, line, where + (".Rating" if isinstance(a, dict) else ""))
            if r is not None:
                values.append(r)
        if values:
            out[attr] = sum(values) / len(values)
    return out


def oasst_ratings(labels, path, line, name: str = "labels") -> dict[str, float]:
    """An OpenAssistant message's labels as ratings: name -> the annotators' mean value (count 0: not rated)."""
    if labels is None:
        return {}
    fix = 'give labels as {"name": [...], "value": [...], "count": [...]} of equal lengths'
    if not isinstance(labels, dict) or not all(isinstance(labels.get(k), list) for k in ("name", "value")):
        raise DataError(path, line, name, "is not an OpenAssistant labels object", fix, reason="oasst: bad labels")
    names, values = labels["name"], labels["value"]
    counts = labels.get("count") or [1] * len(names)
    if not len(names) == len(values) == len(counts):
        raise DataError(
            path,
            line,
            name,
            f"has {len(names)} names, {len(values)} values and {len(counts)} counts",
            fix,
            reason="oasst: bad labels",
        )
    out = {}
    for i, (key, v, n) in enumerate(zip(names, values, counts)):
        if not isinstance(key, str):
            raise DataError(path, line, f"{name}.name[{i}]", "expected a string", fix, reason="oasst: bad labels")
        if n:
            out[key] = check_number(v, path, line, f"{name}.value[{i}] ({key})")
    return out


def has_rated_layout(obj: dict) -> bool:
    """A record of one rated completion: a completion or response field with scores or HelpSteer2's columns."""
    return any(k in obj for k in COMPLETION_KEYS) and ("scores" in obj or any(k in obj for k in HELPSTEER))


def _record_ratings(obj: dict, path, line) -> dict[str, float]:
    if "scores" in obj:
        if not isinstance(obj["scores"], dict):
            raise DataError(
                path,
                line,
                "scores",
                f"expected an object of attribute ratings, got {type(obj['scores']).__name__}",
                'write "scores": {"helpfulness": 3, ...} (a list of scores per completion is the scored format, '
                'with "completions")',
                reason="scores: not an object",
            )
        return check_ratings(obj["scores"], path, line, "scores")
    return check_ratings({k: obj[k] for k in HELPSTEER if k in obj}, path, line, "")


def iter_rated(
    path: Path, report: ReadReport | None = None, skip_invalid: bool = False, conflicts: str = "keep"
) -> Iterator[RankedGroup]:
    """Read rated single completions (see the module's layouts): each record is a group of one completion with its
    ratings and no comparison, for the regression objective (a ranking objective skips such groups). `conflicts`
    has nothing to act on here (every reader takes it)."""
    report = report if report is not None else ReadReport()
    for line, obj in iter_records(path, report, skip_invalid):
        try:
            pkey = next((k for k in PROMPT_KEYS if k in obj), PROMPT_KEYS[0])
            ckey = next((k for k in COMPLETION_KEYS if k in obj), COMPLETION_KEYS[0])
            for key in (pkey, ckey):
                if key not in obj:
                    raise DataError(
                        path, line, key, "is missing", 'write {"prompt": ..., "completion": ..., "scores": {...}}'
                    )
            prompt = check_prompt(obj[pkey], path, line, pkey)
            text = obj[ckey]
            if not isinstance(text, str) or not text.strip():
                raise DataError(
                    path,
                    line,
                    ckey,
                    "is empty" if isinstance(text, str) else f"expected a string, got {type(text).__name__}",
                    "give the completion's text",
                    reason=f"{ckey}: empty or not a string",
                )
            ratings = _record_ratings(obj, path, line)
        except DataError as e:
            report.skip(e, skip_invalid)
            continue
        if not ratings:
            report.skipped["rated records without any rating"] += 1
            continue
        report.notes[RATED] += 1
        report.groups += 1
        yield RankedGroup(prompt, (text,), (0,), source=f"{path}:{line}", attributes=(ratings,))


def count_rated(report: ReadReport, attributes) -> None:
    """Note in the report how many completions of a group carry a rating."""
    if attributes is not None:
        report.notes[RATED] += sum(1 for a in attributes if a)
