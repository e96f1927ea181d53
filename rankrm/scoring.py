"""Scoring files: JSONL of (prompt, completion) in, the same records with "reward" out, streamed in chunks."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .containers import iter_json_lines
from .errors import DataError
from .groups import check_prompt


def _check(obj: dict, path, line) -> tuple:
    prompt = check_prompt(obj.get("prompt"), path, line)
    completion = obj.get("completion")
    if not isinstance(completion, str) or not completion.strip():
        raise DataError(path, line, "completion", "is missing or empty" if not completion else
                        f"expected a string, got {type(completion).__name__}",
                        'give each record {"prompt": ..., "completion": "..."}')
    return prompt, completion


def score_file(model, src, dst, chunk_lines: int = 4096, batch_tokens: int = 4096, progress: bool = True) -> int:
    """Add "reward" to every record of a JSONL file, chunk by chunk (memory bounded by chunk_lines); returns count.

    The output is written to a temporary file and renamed into place at the end: a bad record stops the run with
    nothing written."""
    from tqdm.auto import tqdm

    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    n = 0
    bar = tqdm(desc="scoring", unit=" records", disable=not progress)
    try:
        with open(tmp, "w", encoding="utf-8") as out:
            chunk = []

            def flush():
                rewards = model.score([p for _, p, _ in chunk], [c for _, _, c in chunk], batch_tokens=batch_tokens)
                for (obj, _, _), r in zip(chunk, rewards):
                    obj["reward"] = r
                    out.write(json.dumps(obj, ensure_ascii=False) + "\n")
                bar.update(len(chunk))
                chunk.clear()

            for line, obj in iter_json_lines(src):
                prompt, completion = _check(obj, src, line)
                chunk.append((obj, prompt, completion))
                n += 1
                if len(chunk) >= chunk_lines:
                    flush()
            if chunk:
                flush()
        tmp.replace(dst)
    finally:
        bar.close()
        tmp.unlink(missing_ok=True)
    return n
