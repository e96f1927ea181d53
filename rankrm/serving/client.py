"""Reward functions for RL trainers: `RewardClient` calls a `rankrm serve` over HTTP, `LocalReward` a RewardModel in
this process. Both are TRL reward functions: `(prompts, completions, **kwargs) -> list[float]`, one reward per
completion, in input order; GRPO/RLOO's runs of one prompt repeated are scored as a group (the prompt read once).

Standard library only (urllib), so an RL process needs no extra package to call the server."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request


def completion_text(completion) -> str:
    """A completion as text: a string, or TRL's conversational form [{"role": "assistant", "content": "..."}]."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and len(completion) == 1 and isinstance(completion[0], dict):
        return completion[0]["content"]
    raise ValueError(
        f"a completion must be a string or one assistant message, got {str(completion)[:80]!r}. "
        "Fix: score one reply per completion."
    )


def runs(prompts: list) -> list[tuple[int, int]]:
    """(start, end) of each run of equal consecutive prompts (GRPO lists a prompt's generations together)."""
    out, start = [], 0
    for i in range(1, len(prompts) + 1):
        if i == len(prompts) or prompts[i] != prompts[start]:
            out.append((start, i))
            start = i
    return out


class RewardClient:
    """A TRL reward function served by `rankrm serve` at url (e.g. "http://127.0.0.1:8000")."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        retries: int = 5,
        backoff: float = 0.5,
        max_items: int = 1024,
    ):
        self.url, self.api_key, self.timeout = url.rstrip("/"), api_key, timeout
        self.retries, self.backoff, self.max_items = retries, backoff, max_items
        self.__name__ = "rankrm"  # TRL logs a reward function under its __name__

    def __call__(self, prompts: list, completions: list, **kwargs) -> list[float]:
        texts = [completion_text(c) for c in completions]
        if len(prompts) != len(texts):
            raise ValueError(f"{len(prompts)} prompts and {len(texts)} completions: give one prompt per completion")
        out: list[float] = []
        chunk: list[tuple[int, int]] = []
        for run in runs(prompts) + [None]:  # requests of at most max_items completions, whole runs each
            if run is None or (chunk and run[1] - chunk[0][0] > self.max_items):
                if chunk:
                    groups = [{"prompt": prompts[a], "completions": texts[a:b]} for a, b in chunk]
                    out += [r for g in self.post("/rank", {"groups": groups})["groups"] for r in g["rewards"]]
                chunk = []
            if run is not None:
                chunk.append(run)
        return out

    def score(self, prompts: list, completions: list[str]) -> list[float]:
        """Rewards of (prompt, completion) pairs through /score."""
        items = [{"prompt": p, "completion": c} for p, c in zip(prompts, completions, strict=True)]
        return self.post("/score", {"items": items})["rewards"]

    def rank(self, prompt, completions: list[str]) -> tuple[list[float], list[int]]:
        """One prompt's rewards and order, best first, through /rank."""
        r = self.post("/rank", {"prompt": prompt, "completions": completions})
        return r["rewards"], r["order"]

    def post(self, path: str, body: dict) -> dict:
        """POST JSON; retries connection errors, 503 (after Retry-After) and 5xx; raises ValueError on a 4xx."""
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.retries + 1):
            wait = self.backoff * 2**attempt
            try:
                req = urllib.request.Request(self.url + path, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as e:
                detail = e.read().decode(errors="replace")
                if e.code < 500:
                    raise ValueError(f"rankrm serve refused {path} ({e.code}): {detail}") from None
                if attempt == self.retries:
                    raise OSError(f"rankrm serve failed {path} ({e.code}) {self.retries + 1} times: {detail}") from None
                wait = max(wait, float(e.headers.get("Retry-After") or 0))
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                if attempt == self.retries:
                    raise OSError(
                        f"rankrm serve at {self.url} unreachable after {self.retries + 1} tries: {e}. "
                        "Fix: start it with `rankrm serve --model DIR`, or check the url."
                    ) from None
            time.sleep(wait)
        raise AssertionError("unreachable")


class LocalReward:
    """The same reward function over a RewardModel in this process (no server)."""

    def __init__(self, model, batch_tokens: int = 4096):
        self.model, self.batch_tokens = model, batch_tokens
        self.__name__ = "rankrm"

    def __call__(self, prompts: list, completions: list, **kwargs) -> list[float]:
        texts = [completion_text(c) for c in completions]
        spans = runs(prompts)
        nested = self.model.score_groups(
            [prompts[a] for a, _ in spans], [texts[a:b] for a, b in spans], batch_tokens=self.batch_tokens
        )
        return [r for group in nested for r in group]
