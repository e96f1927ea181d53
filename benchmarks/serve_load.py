"""`rankrm serve` under load, on loopback: throughput and latency against in-process scoring, coalescing on and off,
GRPO-shaped groups through /rank against the same items through /score, and the server's memory over 10,000
requests. Bounded: every cell runs for --seconds (and at most --max-requests requests); servers are killed at the end.

The reward model is a small random Llama (4 layers, hidden 128) with SmolLM2's real tokenizer: big enough that the
model, not HTTP, is most of a request's cost on a CPU, small enough for minutes on 2 cores. The load generator
(threads with keep-alive httpx clients) shares the machine with the server, as an RL trainer on the same host would;
the server and the in-process baseline both run torch on --threads threads (default 1: on a busy 2-core host,
torch's spinning thread pool is several times slower with 2 threads than with 1).

    python -m benchmarks.serve_load            # writes benchmarks/results/serve_load.{md,json}
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._models import tiny_reward_model  # noqa: E402
from benchmarks._results import save  # noqa: E402

THREADS = 1  # torch threads of the server and the in-process baseline (--threads)
WORDS = "the a sky blue is red green cat dog sun moon tree rock fish bird good bad yes no why how".split()


def text(n_words: int, seed: int) -> str:
    return " ".join(WORDS[(seed * 7 + j * 3 + j * j) % len(WORDS)] for j in range(n_words))


def score_items(n: int) -> list[dict]:
    """RL-ish single items: a chat prompt of ~40 words and a reply of ~25."""
    return [{"prompt": [{"role": "user", "content": text(40, i)}], "completion": text(25, i + 1)} for i in range(n)]


def grpo_groups(n: int, tok, prompt_tokens=256, completion_tokens=64, k=8) -> list[dict]:
    """GRPO-shaped groups: a prompt of prompt_tokens tokens with k completions of completion_tokens tokens each."""

    def exact(seed, length):
        ids = tok(text(length * 2, seed), add_special_tokens=False).input_ids[:length]
        return tok.decode(ids)

    return [
        {
            "prompt": exact(g, prompt_tokens),
            "completions": [exact(1000 * g + j, completion_tokens - 1) for j in range(k)],
        }
        for g in range(n)
    ]


class Server:
    def __init__(self, model: Path, *flags):
        cmd = [
            sys.executable,
            "-m",
            "rankrm",
            "serve",
            "--model",
            str(model),
            "--port",
            "0",
            "--log-level",
            "warning",
            "--threads",
            str(THREADS),
            *flags,
        ]
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.url = None
        for line in self.proc.stderr:  # the first line names the port
            if " on http://" in line:
                self.url = line.split(" on ")[1].split()[0]
                break
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
        import httpx

        for _ in range(600):
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def metric(self, name: str) -> float:
        import httpx

        text = httpx.get(self.url + "/metrics", timeout=10).text
        return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))

    def rss_mib(self) -> tuple[float, float]:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        get = lambda k: int(re.search(rf"^{k}:\s+(\d+) kB", status, re.M).group(1)) / 1024  # noqa: E731
        return get("VmRSS"), get("VmHWM")

    def stop(self):
        self.proc.kill()
        self.proc.wait(30)


def load(url: str, path: str, bodies: list[dict], clients: int, seconds: float, max_requests: int) -> dict:
    """clients threads posting bodies round-robin for seconds (or max_requests in all): latencies and counts."""
    end, lat, fails, sent, lock = time.monotonic() + seconds, [], [0], [0], threading.Lock()

    def worker(w):
        # http.client, keep-alive: it sends a small body in the headers' packet (httpx's two writes met the server's
        # delayed ACK and added ~45 ms to every request here)
        host, port = url.split("//")[1].split(":")
        conn, i = http.client.HTTPConnection(host, int(port), timeout=120), w
        try:
            while time.monotonic() < end:
                with lock:
                    if sent[0] >= max_requests:
                        return
                    sent[0] += 1
                data = json.dumps(bodies[i % len(bodies)]).encode()
                t0 = time.perf_counter()
                conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                with lock:
                    if resp.status == 200:
                        lat.append(time.perf_counter() - t0)
                    else:
                        fails[0] += 1
                i += clients
        finally:
            conn.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 300)
    return {"latencies": lat, "failed": fails[0], "seconds": time.monotonic() - t0}


class Cell:
    """One (server, load) measured over several rounds: latencies pooled, time and model calls added up."""

    def __init__(self):
        self.lat, self.seconds, self.failed, self.calls, self.requests, self.busy = [], 0.0, 0, 0.0, 0.0, 0.0
        self.reference: list[float] = []  # in-process items/s measured just before each run of the cell

    def add(self, result: dict, calls: tuple[float, float, float] = (0, 0, 0)):
        self.lat += result["latencies"]
        self.seconds += result["seconds"]
        self.failed += result["failed"]
        self.calls, self.requests, self.busy = self.calls + calls[0], self.requests + calls[1], self.busy + calls[2]

    def summary(self) -> dict:
        lat = sorted(self.lat)
        q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")  # noqa: E731
        return {
            "requests": len(lat),
            "failed": self.failed,
            "seconds": self.seconds,
            "rps": len(lat) / self.seconds,
            "p50_ms": q(0.50),
            "p95_ms": q(0.95),
            "p99_ms": q(0.99),
            "mean_batch_requests": self.requests / self.calls if self.calls else float("nan"),
            "model_busy": self.busy / self.seconds,
            "in_process_items_per_s": statistics.median(self.reference) if self.reference else float("nan"),
        }


def model_calls(server: Server) -> tuple[float, float, float]:
    """(model calls, requests they served, seconds the model thread spent) so far, from the server's /metrics."""
    return (
        server.metric("rankrm_batch_requests_count"),
        server.metric("rankrm_batch_requests_sum"),
        server.metric("rankrm_model_seconds_total"),
    )


class InProcess:
    """RewardModel.score / score_groups in this process on the benchmark's items, as a baseline (items/s)."""

    def __init__(self, model_dir: Path, batch_tokens: int):
        import torch

        from rankrm.modeling.model import RewardModel

        torch.set_num_threads(THREADS)
        self.rm, self.batch_tokens = RewardModel.from_pretrained(str(model_dir)), batch_tokens

    def rate(self, seconds: float, prompts: list, completions: list, grouped: bool = False) -> float:
        def once():
            if grouped:
                self.rm.score_groups(prompts, completions, batch_tokens=self.batch_tokens)
            else:
                self.rm.score(prompts, completions, batch_tokens=self.batch_tokens)

        n = sum(len(c) for c in completions) if grouped else len(completions)
        once()  # warm-up
        t0, calls = time.monotonic(), 0
        while time.monotonic() - t0 < seconds:
            once()
            calls += 1
        return calls * n / (time.monotonic() - t0)


CONFIGS = [
    ("default (--max-wait-ms 0: what queued)", []),
    ("--max-wait-ms 5", ["--max-wait-ms", "5"]),
    ("no coalescing (--max-batch-requests 1)", ["--max-batch-requests", "1"]),
]


def rounds(servers, inproc, items, bodies, groups, args) -> tuple[dict, dict, dict]:
    """args.rounds rounds over every (server, clients) cell and the GRPO cells. Each cell is measured right after
    an in-process run on the same items, and compared with it: other work on the machine drifts, and a baseline
    taken minutes apart would not see the same machine."""
    cells, grpo, base = {}, {"rank": Cell(), "score": Cell()}, {"score": [], "grpo_score": [], "grpo_groups": []}
    flat = [{"items": [{"prompt": g["prompt"], "completion": c} for c in g["completions"]]} for g in groups]
    half = args.seconds / 2
    for r in range(args.rounds):
        for clients in args.clients:
            for label, s in servers.items():
                ref = inproc.rate(half, [i["prompt"] for i in items], [i["completion"] for i in items])
                base["score"].append(ref)
                before = model_calls(s)
                res = load(s.url, "/score", bodies, clients, args.seconds, args.max_requests)
                after = model_calls(s)
                cell = cells.setdefault((label, clients), Cell())
                cell.add(res, tuple(a - b for a, b in zip(after, before)))
                cell.reference.append(ref)
        s = servers[CONFIGS[0][0]]
        base["grpo_groups"].append(
            inproc.rate(half, [g["prompt"] for g in groups], [g["completions"] for g in groups], grouped=True)
        )
        grpo["rank"].add(load(s.url, "/rank", groups, 8, args.seconds, args.max_requests))
        base["grpo_score"].append(
            inproc.rate(
                half,
                [g["prompt"] for g in groups for _ in g["completions"]],
                [c for g in groups for c in g["completions"]],
            )
        )
        grpo["score"].add(load(s.url, "/score", flat, 8, args.seconds, args.max_requests))
        print(f"round {r + 1}/{args.rounds} done; load average {os.getloadavg()[0]:.1f}", flush=True)
    return cells, grpo, {k: statistics.median(v) for k, v in base.items()}


def memory_run(server: Server, requests: int) -> list[dict]:
    """The server's RSS every requests/5 single-item requests (8 clients)."""
    small, out = [{"items": [i]} for i in score_items(64)], []
    rss, hwm = server.rss_mib()
    out.append({"requests": 0, "rss_mib": rss, "peak_mib": hwm, "failed": 0})
    step = requests // 5
    for done in range(step, requests + 1, step):
        r = load(server.url, "/score", small, 8, 600, step)
        rss, hwm = server.rss_mib()
        out.append({"requests": done, "rss_mib": rss, "peak_mib": hwm, "failed": r["failed"]})
        print("memory", out[-1], flush=True)
    return out


def table(cells, grpo, base, bound, memory, args, load_avg, k) -> list[str]:
    rows = [
        "| server | clients | requests/s | items/s | p50 ms | p95 ms | p99 ms | requests per model call "
        "| model thread busy | items/s vs in-process |",
        "| --- " * 10 + "|",
    ]
    for (label, clients), cell in cells.items():
        r = cell.summary()
        rows.append(
            f"| {label} | {clients} | {r['rps']:.1f} | {r['rps'] * k:.0f} | {r['p50_ms']:.0f} | "
            f"{r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['mean_batch_requests']:.2f} | {r['model_busy']:.0%} | "
            f"{r['rps'] * k / r['in_process_items_per_s']:.0%} |"
        )
    rank, flat = grpo["rank"].summary(), grpo["score"].summary()
    speed, inproc = rank["rps"] / flat["rps"], base["grpo_groups"] / base["grpo_score"]
    lo, hi = (
        min(c.summary()["in_process_items_per_s"] for c in cells.values()),
        max(c.summary()["in_process_items_per_s"] for c in cells.values()),
    )
    rows += [
        "",
        f"In-process `RewardModel.score` on the same items (batch_tokens {args.batch_tokens}), run for "
        f"{args.seconds / 2:.1f} s just before each server run and compared with it: {base['score']:.0f} items/s "
        f"(median; the cells' medians ranged {lo:.0f}-{hi:.0f}, other work on the machine varied).",
        "",
        "| GRPO-shaped load (256-token prompt, 8 completions of 64 tokens; 8 clients) | completions/s | p50 ms "
        "| p95 ms | in-process completions/s |",
        "| --- | --- | --- | --- | --- |",
        f"| /score (each completion with its prompt) | {flat['rps'] * 8:.0f} | {flat['p50_ms']:.0f} | "
        f"{flat['p95_ms']:.0f} | {base['grpo_score']:.0f} (score) |",
        f"| /rank (the prompt read once per group) | {rank['rps'] * 8:.0f} | {rank['p50_ms']:.0f} | "
        f"{rank['p95_ms']:.0f} | {base['grpo_groups']:.0f} (score_groups) |",
        "",
        f"/rank over /score: {speed:.2f}x, against a token-ratio bound of {bound:.2f}x (tokens /score reads over "
        f"tokens /rank reads): {speed / bound:.0%} of the bound. In-process score_groups over score: "
        f"{inproc:.2f}x ({inproc / bound:.0%} of the bound).",
        "",
        "| single-item requests served | server RSS (MiB) | server peak RSS (MiB) |",
        "| --- | --- | --- |",
    ]
    rows += [f"| {m['requests']:,} | {m['rss_mib']:.0f} | {m['peak_mib']:.0f} |" for m in memory]
    failed = sum(c.failed for c in cells.values())
    rows += [
        "",
        f"{args.rounds} rounds of {args.seconds:.0f} s per cell, interleaved across the servers; {k} items "
        f"per /score request; {failed} failed requests. The load generator shares the 2 cores with the server. "
        f"Load average before/after: {load_avg[0]:.1f} / {load_avg[1]:.1f}.",
    ]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of each load cell in each round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over all cells (interleaved)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrent clients per cell")
    ap.add_argument("--items-per-request", type=int, default=4, help="(prompt, completion) items per /score call")
    ap.add_argument("--max-requests", type=int, default=100_000, help="cap on requests per cell")
    ap.add_argument("--memory-requests", type=int, default=10_000, help="requests of the memory run")
    ap.add_argument("--batch-tokens", type=int, default=4096, help="in-process batch_tokens (the server's default)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server and of in-process scoring")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    global THREADS
    THREADS = args.threads
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_reward_model(Path(tmp), hidden=128, intermediate=384, layers=4, max_positions=1024, max_length=512)
        from rankrm.serving.engine import Renderer

        inproc = InProcess(model, args.batch_tokens)
        items, k = score_items(256), args.items_per_request
        bodies = [{"items": items[i : i + k]} for i in range(0, len(items), k)]
        groups = grpo_groups(16, inproc.rm.tokenizer)
        ren = Renderer(inproc.rm)
        flat_tokens = ren.pairs(
            [g["prompt"] for g in groups for _ in g["completions"]], [c for g in groups for c in g["completions"]]
        )[2]
        bound = flat_tokens / ren.groups([g["prompt"] for g in groups], [g["completions"] for g in groups])[2]
        servers = {}
        try:
            for label, flags in CONFIGS:
                servers[label] = Server(model, *flags)
            cells, grpo, base = rounds(servers, inproc, items, bodies, groups, args)
            memory = memory_run(servers[CONFIGS[0][0]], args.memory_requests)
        finally:
            for s in servers.values():
                s.stop()
    load_avg = (load_before, os.getloadavg()[0])
    head = (
        "# `rankrm serve` under load (loopback, 2 CPU cores, small Llama: 4 layers, hidden 128, SmolLM2 "
        f"tokenizer; torch threads {args.threads})\n"
    )
    payload = {
        "cells": [{"config": lab, "clients": c, **cell.summary()} for (lab, c), cell in cells.items()],
        "grpo": {k2: v.summary() for k2, v in grpo.items()},
        "in_process": base,
        "token_ratio_bound": bound,
        "memory": memory,
        "args": {a: str(v) for a, v in vars(args).items()},
        "load_average": load_avg,
    }
    save(
        args.out,
        "serve_load",
        head,
        table(cells, grpo, base, bound, memory, args, load_avg, k),
        payload,
        "serve_load.py",
    )


if __name__ == "__main__":
    main()
