"""Scoring files: JSONL of (prompt, completion) in, the same records with "reward" (and the head's other outputs)
out, streamed in chunks."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rankrm.data.containers import iter_json_lines
from rankrm.data.validate import check_prompt
from rankrm.errors import DataError
from rankrm.files import atomic_file
from rankrm.progress import Progress


def _check(obj: dict, path, line) -> tuple:
    prompt = check_prompt(obj.get("prompt"), path, line)
    completion = obj.get("completion")
    if not isinstance(completion, str) or not completion.strip():
        raise DataError(
            path,
            line,
            "completion",
            "is missing or empty" if not completion else f"expected a string, got {type(completion).__name__}",
            'give each record {"prompt": ..., "completion": "..."}',
        )
    return prompt, completion


def score_file(model, src, dst, chunk_lines: int = 4096, batch_tokens: int = 4096, progress: bool = True) -> dict:
    """Add "reward" to every record of a JSONL file, chunk by chunk (memory bounded by chunk_lines); a model with a
    multi-output head (modeling/heads.py) adds its other outputs too: an ensemble's "reward_std" and members, ODIN's
    "length" (RewardModel.score_outputs).

    A record whose prompt was cut to fit the model's max length also gets "truncated": true. The output is written
    to a temporary file and renamed into place at the end: a bad record, or a reward that is not a finite number,
    stops the run with nothing written. Returns counts: records, truncated."""
    src, dst = Path(src), Path(dst)
    counts = {"records": 0, "truncated": 0}
    bar = Progress("scoring", unit="records", enabled=progress)
    try:
        with atomic_file(dst) as out:
            chunk = []

            def flush():
                fields, cut = model.score_outputs(
                    [p for _, _, p, _ in chunk],
                    [c for _, _, _, c in chunk],
                    batch_tokens=batch_tokens,
                    return_truncated=True,
                )
                for k, ((line, obj, _, _), was_cut) in enumerate(zip(chunk, cut)):
                    for name, values in fields.items():  # "reward", then an ensemble's "reward_std", other outputs
                        if not math.isfinite(values[k]):
                            raise DataError(
                                src,
                                line,
                                None,
                                f"scores {name} {values[k]} (not a finite number)",
                                "check the model: `rankrm eval` on held-out data shows whether it diverged",
                            )
                        obj[name] = values[k]
                    if was_cut:
                        obj["truncated"] = True
                        counts["truncated"] += 1
                    out.write(json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n")
                bar.update(len(chunk))
                chunk.clear()

            for line, obj in iter_json_lines(src):
                prompt, completion = _check(obj, src, line)
                chunk.append((line, obj, prompt, completion))
                counts["records"] += 1
                if len(chunk) >= chunk_lines:
                    flush()
            if chunk:
                flush()
    finally:
        bar.close()
    return counts
