"""The model side of `rankrm serve`: requests' sequences coalesced into token-budget batches on one worker thread.

HTTP handlers turn a request into a Job (its sequences rendered and tokenized once, by the Renderer) and wait on its
future; a single worker thread owns the model. It takes the oldest job, then keeps taking queued jobs until the
batch holds max_batch_tokens tokens or max_batch_requests jobs or max_wait has passed since the first arrived, and
scores them all with one RewardModel.score_ids call (single sequences) and one RewardModel.score_group_ids call
(groups: each prompt encoded once). The queue is bounded: a full queue is refused at once (the server answers 503).

max_wait defaults to 0: under load, requests queue while the model is busy and share the next batch anyway
(benchmarks/serve_load.py measured 4-9 requests per model call at 8-32 clients), and on a CPU a model call has
little fixed cost to share, so waiting only adds latency. A positive wait pays where a call's fixed cost is large
(a GPU at low load)."""

from __future__ import annotations

import copy
import json
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from rankrm.data.encode import shared_prefix_length

log = logging.getLogger("rankrm")


class QueueFull(Exception):
    """The bounded queue holds max_queue jobs already, or the server is shutting down."""


@dataclass
class Job:
    """One request's work, tokenized: kind "pairs" scores each row of ids (prompt + completion + EOS, cut to the
    max length); kind "groups" scores each group of rows (a prompt's completions), encoding the prompt once."""

    kind: str
    ids: list  # pairs: list[list[int]]; groups: list[list[list[int]]]
    tokens: int  # tokens the model reads for this job (after truncation): its share of the batch budget
    future: Future = field(default_factory=Future)

    @property
    def sequences(self) -> int:
        return len(self.ids) if self.kind == "pairs" else sum(len(g) for g in self.ids)


class Renderer:
    """Prompts rendered and tokenized once, as the model reads them (cut to its max length), with truncation flags
    and token counts, and the split of full texts: worked out on the HTTP side, so the model's thread does no chat
    template or tokenizer work and scores token ids.

    Threads borrow one of a few copies of the model's TextEncoder, made once at start: a fast tokenizer used from
    several threads at once can fail with 'Already borrowed', and copying one per HTTP worker thread costs seconds
    of GIL-holding work under load."""

    def __init__(self, model, copies: int = 2):
        self.model = model
        self.max_length = model.max_length
        tok = model.tokenizer
        self.eos = tok.eos_token
        self.bos = model.render("", "")[: -len(self.eos)]  # what the model puts before a string prompt: BOS or ""
        self.specials = [s for s in {tok.pad_token, self.eos} if s]  # padding a decoded batch may carry
        self._pool: queue.Queue = queue.Queue()
        for _ in range(copies):
            self._pool.put(copy.deepcopy(model.encoder))

    def tokenize(self, texts: list[str], completions: list[str]) -> tuple[list[list[int]], list[bool]]:
        """Token ids of (rendered prompt text, completion) pairs and which were cut: TextEncoder.tokenize, the
        model's own, on a borrowed copy."""
        if not texts:
            return [], []
        encoder = self._pool.get()
        try:
            return encoder.tokenize(texts, completions)
        finally:
            self._pool.put(encoder)

    def prompt_text(self, prompt) -> str:
        """The prompt as the model reads it, as a string that RewardModel.render takes verbatim: render(p, c) ==
        render(prompt_text(p), c). Rendering a chat once here spares the model thread its chat template."""
        return self.model.render(prompt, "")[: -len(self.eos)]

    def prompt_texts(self, prompts: list) -> list[str]:
        cache: dict[str, str] = {}  # GRPO sends one prompt many times
        keys = [p if isinstance(p, str) else json.dumps(p, sort_keys=True) for p in prompts]
        return [cache[k] if k in cache else cache.setdefault(k, self.prompt_text(p)) for k, p in zip(keys, prompts)]

    def pairs(self, prompts: list, completions: list[str]) -> tuple[list[list[int]], list[bool], int]:
        """(token ids, truncated flag, tokens read) of (prompt, completion) pairs, as RewardModel.score reads them."""
        ids, cut = self.tokenize(self.prompt_texts(prompts), completions)  # a repeated prompt: one object, read once
        return ids, cut, sum(len(x) for x in ids)

    def groups(self, prompts: list, completions: list[list[str]]) -> tuple[list, list[list[bool]], int]:
        """(token ids per group, truncated flags per group, tokens read with each prompt counted once) of groups, as
        RewardModel.score_groups reads them."""
        texts = self.prompt_texts(prompts)
        ids, cut = self.tokenize(
            [t for t, cs in zip(texts, completions) for _ in cs], [c for cs in completions for c in cs]
        )
        groups, flags, tokens, at = [], [], 0, 0
        for cs in completions:
            rows = ids[at : at + len(cs)]
            groups.append(rows)
            flags.append(cut[at : at + len(cs)])
            shared = shared_prefix_length(rows)
            tokens += shared + sum(len(x) - shared for x in rows)
            at += len(cs)
        return groups, flags, tokens

    def split_full_text(self, text: str) -> str:
        """The completion c such that render("", c) is text as the model reads it: the rendered prompt + response,
        with or without its final EOS and the leading BOS; padding around it (a decoded left- or right-padded
        batch) and whitespace after a final EOS (a chat template's newline) are dropped."""
        t = text
        while any(t.startswith(s) for s in self.specials):
            t = t[len(next(s for s in self.specials if t.startswith(s))) :]
        if self.bos and t.startswith(self.bos):
            t = t[len(self.bos) :]
        while True:
            end = next((s for s in self.specials if t.endswith(s)), None)
            if end is not None:
                t = t[: -len(end)]
            elif t != t.rstrip() and any(t.rstrip().endswith(s) for s in self.specials):
                t = t.rstrip()
            else:
                return t


class Metrics:
    """Prometheus metrics of one server: requests, errors by status, latency, batch sizes, tokens and model time."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "rankrm_requests", "HTTP requests answered, by endpoint and status code", ["endpoint", "status"], registry=r
        )
        self.errors = Counter(
            "rankrm_errors", "HTTP requests answered with a 4xx or 5xx status, by status", ["status"], registry=r
        )
        self.latency = Histogram(
            "rankrm_request_seconds",
            "time from request to response, by endpoint",
            ["endpoint"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.batch_requests = Histogram(
            "rankrm_batch_requests",
            "requests coalesced into one model call",
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.batch_sequences = Histogram(
            "rankrm_batch_sequences",
            "sequences scored in one model call",
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
        )
        self.tokens = Counter("rankrm_tokens", "tokens read by the model", registry=r)
        self.sequences = Counter("rankrm_sequences", "sequences scored", registry=r)
        self.model_seconds = Counter("rankrm_model_seconds", "seconds the model thread spent scoring", registry=r)
        self.tokens_per_second = Gauge(
            "rankrm_tokens_per_second", "tokens per second of the last model call", registry=r
        )
        self.queue_depth = Gauge("rankrm_queue_depth", "jobs waiting for the model", registry=r)

    def observe_batch(self, jobs: list[Job], seconds: float) -> None:
        tokens = sum(j.tokens for j in jobs)
        self.batch_requests.observe(len(jobs))
        self.batch_sequences.observe(sum(j.sequences for j in jobs))
        self.sequences.inc(sum(j.sequences for j in jobs))
        self.tokens.inc(tokens)
        self.model_seconds.inc(seconds)
        self.tokens_per_second.set(tokens / seconds if seconds > 0 else 0.0)


class Batcher:
    """A bounded queue of jobs and the one thread that scores them in coalesced batches."""

    def __init__(
        self,
        model,
        metrics: Metrics,
        max_batch_tokens: int = 4096,
        max_wait_ms: float = 0.0,
        max_queue: int = 256,
        max_batch_requests: int = 64,
    ):
        self.model, self.metrics = model, metrics
        self.max_batch_tokens, self.max_wait = max_batch_tokens, max_wait_ms / 1000
        self.max_batch_requests = max_batch_requests
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._carry: Job | None = None  # a job taken from the queue that did not fit the last batch
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="rankrm-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, job: Job) -> Future:
        """Queue a job; raises QueueFull at once when the queue is full or the server is stopping."""
        if self._closing:
            raise QueueFull("the server is shutting down")
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self._queue.maxsize} requests are waiting already") from None
        self.metrics.queue_depth.set(self._queue.qsize())
        return job.future

    def close(self, timeout: float = 60.0) -> None:
        """Refuse new jobs, finish the queued ones, stop the thread."""
        self._closing = True
        self._queue.put(None)  # wakes the thread; it stops once everything before it is scored
        self._thread.join(timeout)

    # -- the model thread --------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            jobs, stop = self._collect()
            if jobs:
                self._score(jobs)
            if stop:
                return

    def _collect(self) -> tuple[list[Job], bool]:
        """The next batch: the oldest job, then more while the budget, the request count and max_wait allow."""
        first = self._carry or self._queue.get()
        self._carry = None
        if first is None:
            return [], True
        jobs, tokens = [first], first.tokens
        deadline = time.monotonic() + self.max_wait
        while len(jobs) < self.max_batch_requests and tokens < self.max_batch_tokens:
            try:
                wait = deadline - time.monotonic()
                job = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self.metrics.queue_depth.set(self._queue.qsize())
                return jobs, True
            if tokens + job.tokens > self.max_batch_tokens:
                self._carry = job
                break
            jobs.append(job)
            tokens += job.tokens
        self.metrics.queue_depth.set(self._queue.qsize())
        return jobs, False

    def _score(self, jobs: list[Job]) -> None:
        """Score a batch in two model calls; if one fails, score its jobs one by one so only a bad one fails."""
        start = time.perf_counter()
        try:
            results = self._forward(jobs)
        except Exception:
            if len(jobs) == 1:
                log.exception("scoring failed")
                jobs[0].future.set_exception(RuntimeError("the model failed on this request; see the server log"))
                return
            for job in jobs:
                self._score([job])
            return
        self.metrics.observe_batch(jobs, time.perf_counter() - start)
        for job, result in zip(jobs, results):
            job.future.set_result(result)

    def _forward(self, jobs: list[Job]) -> list[list]:
        pairs = [j for j in jobs if j.kind == "pairs"]
        groups = [j for j in jobs if j.kind == "groups"]
        budget = self.max_batch_tokens
        # the head's outputs (output 0 the reward; modeling/heads.py): (n, O) rows, one (K, O) tensor per group
        flat = self.model.id_outputs([r for j in pairs for r in j.ids], batch_tokens=budget) if pairs else []
        nested = self.model.group_outputs([g for j in groups for g in j.ids], batch_tokens=budget) if groups else []
        out, at_flat, at_nested = {}, 0, 0
        for j in pairs:
            out[id(j)] = flat[at_flat : at_flat + len(j.ids)]
            at_flat += len(j.ids)
        for j in groups:
            out[id(j)] = nested[at_nested : at_nested + len(j.ids)]
            at_nested += len(j.ids)
        return [out[id(j)] for j in jobs]
