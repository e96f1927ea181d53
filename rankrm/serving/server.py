"""`rankrm serve`: the reward model over HTTP for RL loops (OpenRLHF, verl, TRL, your own), on FastAPI + uvicorn.

Safe by default: it binds loopback, refuses a non-loopback address without an API key, checks the key in constant
time on every endpoint but /health, bounds bodies, items and the queue, and on SIGTERM finishes the requests in
flight before it exits. The endpoints are in serve_api.py, the batching in serve_engine.py."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import sys
from pathlib import Path

from rankrm.errors import SettingsError

log = logging.getLogger("rankrm")
KEY_ENV = "RANKRM_API_KEY"


def add_serve_parser(sub) -> None:
    """`rankrm serve`."""
    s = sub.add_parser(
        "serve",
        help="serve a reward model over HTTP (/score, /rank, /get_reward, /classify)",
        description="Serve a saved reward model over HTTP: /score, /rank, OpenRLHF's /get_reward, "
        "vLLM's /classify, /health, /info, /metrics. Needs `pip install rankrm[serve]`.",
    )
    s.add_argument("--model", required=True, help="a saved reward model directory (or hub id)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind; anything but loopback needs an API key")
    s.add_argument("--port", type=int, default=8000, help="port to bind (0: any free port, printed at start)")
    s.add_argument(
        "--api-key",
        default=None,
        help=f"require this key (Authorization: Bearer KEY) on every "
        f"endpoint but /health; default: the {KEY_ENV} variable",
    )
    s.add_argument(
        "--max-length", type=int, default=None, help="tokens per prompt + completion (default: the model's own)"
    )
    s.add_argument(
        "--max-batch-tokens",
        type=int,
        default=4096,
        help="tokens the model reads per coalesced batch (RewardModel.score's default; more on a GPU)",
    )
    s.add_argument(
        "--max-wait-ms",
        type=float,
        default=0.0,
        help="how long a batch's first request waits for "
        "others (0: none; requests that queued while the model was busy share a batch anyway)",
    )
    s.add_argument("--max-queue", type=int, default=256, help="requests waiting for the model; more get 503")
    s.add_argument(
        "--max-batch-requests", type=int, default=64, help="requests merged into one model call (1: no coalescing)"
    )
    s.add_argument("--max-items", type=int, default=4096, help="sequences per request; more get 413")
    s.add_argument("--max-body-bytes", type=int, default=16 * 2**20, help="request body size; larger gets 413")
    s.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="weights' dtype (bfloat16/float16 on a GPU)",
    )
    s.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads for the model (default: torch's own; 1 avoids thread contention on a busy CPU host)",
    )
    s.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    s.add_argument("--log-level", default="info", help="uvicorn's log level (warning: no access log)")
    s.set_defaults(func=cmd_serve)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, made here so that --port 0's port is known before serving.

    proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so, and without it Nagle's
    algorithm and the client's delayed ACK add ~40 ms to every response on a kept-alive connection."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets on Linux
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def problem_type_of(path: str) -> str | None:
    """config.json's problem_type (vLLM reads a one-label model raw only when it is "regression")."""
    cfg = Path(path) / "config.json"
    return json.loads(cfg.read_text()).get("problem_type") if cfg.is_file() else None


def cmd_serve(args) -> int:
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise SettingsError(f"rankrm serve needs {e.name}. Fix: pip install 'rankrm[serve]'") from None
    import torch

    from rankrm._version import __version__
    from rankrm.modeling.model import RewardModel
    from rankrm.serving.app import build_app
    from rankrm.serving.guard import ServeOptions

    key = args.api_key or os.environ.get(KEY_ENV) or None
    if not is_loopback(args.host) and key is None:
        raise SettingsError(
            f"refusing to bind {args.host} without an API key: anyone who reaches it could use the "
            f"model. Fix: pass --api-key KEY (or set {KEY_ENV}), or bind 127.0.0.1."
        )
    for flag in ("max_batch_tokens", "max_queue", "max_batch_requests", "max_items", "max_body_bytes"):
        if getattr(args, flag) < 1:
            raise SettingsError(
                f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}. Fix: give 1 or more"
            )
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = RewardModel.from_pretrained(args.model, dtype=getattr(torch, args.dtype), max_length=args.max_length)
    model.to(device).eval()
    opts = ServeOptions(
        api_key=key,
        max_batch_tokens=args.max_batch_tokens,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_batch_requests=args.max_batch_requests,
        max_items=args.max_items,
        max_body_bytes=args.max_body_bytes,
        problem_type=problem_type_of(args.model),
    )
    app = build_app(model, args.model, opts, __version__)
    sock = bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(
        f"rankrm serve: {args.model} on http://{shown}:{port} ({device}, {args.dtype}, max length "
        f"{model.max_length}, {'API key required' if key else 'no API key'})",
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(
        app, log_level=args.log_level, timeout_graceful_shutdown=60, access_log=args.log_level in ("debug", "trace")
    )
    uvicorn.Server(config).run(sockets=[sock])  # on SIGTERM/SIGINT: finishes the requests in flight, then exits
    return 0
