"""The HTTP side of `rankrm serve`: a FastAPI app whose endpoints all end in RewardModel.score / score_groups.

Every endpoint answers exactly RewardModel.score's reward (reward_bias included) for the same input: /score and
/rank take prompts and completions; /get_reward and /classify take the full text the model reads
(RewardModel.render(prompt, completion)) and score it as RewardModel.score reads that pair.

Bad input (an invalid body, a prompt the chat template refuses, too many items) is answered 4xx with the field and
the fix. Anything else is a bug: 500 with an error id in the body, and the same id logged with the traceback."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from rankrm.errors import RankrmError
from rankrm.modeling.heads import output_fields
from rankrm.serving.engine import Batcher, Job, Metrics, QueueFull, Renderer
from rankrm.serving.guard import ApiError, Guard, ServeOptions, add_error_handlers, internal_error
from rankrm.serving.schema import (
    ClassifyRequest,
    ClassifyResponse,
    GetRewardRequest,
    GetRewardResponse,
    RankRequest,
    RankResponse,
    ScoreRequest,
    ScoreResponse,
    prompt_value,
)


@dataclass
class Served:
    """What the endpoints share: the model, its name, the options, the batcher and the renderer."""

    model: object
    name: str
    opts: ServeOptions
    metrics: Metrics
    batcher: Batcher
    renderer: Renderer
    version: str

    def check_count(self, n: int, what: str) -> None:
        if n > self.opts.max_items:
            raise ApiError(
                413,
                f"{what}: {n} sequences in one request; this server takes at most {self.opts.max_items} (--max-items)",
                what,
                "split the request",
            )

    async def render(self, fn, *args):
        """fn (a Renderer method) on a worker thread; a prompt the chat template refuses is the caller's 422, any
        other exception a bug (500 with an id)."""
        try:
            return await run_in_threadpool(fn, *args)
        except RankrmError as e:  # the template refused the messages (TextEncoder.render_prompt), ...
            raise ApiError(
                422,
                f"the prompt cannot be rendered: {e}",
                "prompt",
                "check the messages' roles and order against the model's chat template",
            ) from None
        except Exception as e:
            raise internal_error(e, "rendering the prompts") from None

    async def run(self, job: Job):
        """The job's rewards from the model thread; 503 with Retry-After when the queue is full."""
        try:
            future = self.batcher.submit(job)
        except QueueFull as e:
            raise ApiError(
                503, f"the server is busy: {e}", None, "retry after a moment", {"Retry-After": "1"}
            ) from None
        try:
            return await asyncio.wrap_future(future)
        except Exception as e:  # the request was checked and rendered: what fails now is ours
            raise internal_error(e, "scoring") from None

    async def pairs(self, prompts: list, completions: list[str]) -> tuple[dict, list[bool], int]:
        """(outputs by name, truncated flags, tokens read) of (prompt, completion) pairs: "reward", and a
        multi-output head's others (heads.output_fields: an ensemble's "reward_std", ...)."""
        ids, flags, tokens = await self.render(self.renderer.pairs, prompts, completions)
        return output_fields(await self.run(Job("pairs", ids, tokens)), self.model.head_spec), flags, tokens

    async def texts(self, texts: list[str]) -> tuple[dict, list[bool], int]:
        """Full rendered texts (with or without EOS/BOS) -> rewards, as RewardModel.score reads the pair: the
        text is render("", c) for the c split_full_text finds (a string prompt "" adds only the BOS)."""
        return await self.pairs([""] * len(texts), [self.renderer.split_full_text(t) for t in texts])


def build_app(model, name: str, opts: ServeOptions, version: str) -> FastAPI:
    """The app serving model under name; its batcher starts and stops with the app's lifespan."""
    from contextlib import asynccontextmanager

    metrics = Metrics()
    batcher = Batcher(model, metrics, opts.max_batch_tokens, opts.max_wait_ms, opts.max_queue, opts.max_batch_requests)
    served = Served(model, name, opts, metrics, batcher, Renderer(model), version)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await run_in_threadpool(batcher.close)  # uvicorn has finished the requests in flight by now

    app = FastAPI(
        title="rankrm serve",
        version=version,
        lifespan=lifespan,
        description="Rewards of a rankrm reward model over HTTP.",
    )
    add_error_handlers(app)
    add_reward_routes(app, served)
    add_classify_route(app, served)
    add_status_routes(app, served)
    app.add_middleware(Guard, opts=opts, metrics=metrics, routes={r.path for r in app.routes})
    return app


def add_reward_routes(app: FastAPI, s: Served) -> None:
    """/score, /rank, /get_reward: each ends in RewardModel.score or score_groups."""

    @app.post("/score", response_model=ScoreResponse, response_model_exclude_none=True)
    async def score(body: ScoreRequest):
        """Rewards of (prompt, completion) pairs, in input order."""
        s.check_count(len(body.items), "items")
        fields, flags, _ = await s.pairs(
            [prompt_value(i.prompt) for i in body.items], [i.completion for i in body.items]
        )
        return {"rewards": fields.pop("reward"), "truncated": flags, "model": s.name, **extras(fields)}

    @app.post("/rank", response_model=RankResponse, response_model_exclude_none=True)
    async def rank(body: RankRequest):
        """Rewards of each prompt's completions and their order, best first; each prompt is read once."""
        groups = body.as_groups()
        s.check_count(sum(len(g.completions) for g in groups), "completions")
        prompts = [prompt_value(g.prompt) for g in groups]
        completions = [g.completions for g in groups]
        ids, flags, tokens = await s.render(s.renderer.groups, prompts, completions)
        outputs = await s.run(Job("groups", ids, tokens))
        out = []
        for o, f in zip(outputs, flags):
            fields = output_fields(o, s.model.head_spec)
            r = fields.pop("reward")
            out.append({"rewards": r, "order": sorted(range(len(r)), key=lambda i: -r[i]), "truncated": f})
            out[-1].update(extras(fields))
        return {**out[0], "model": s.name} if body.groups is None else {"groups": out, "model": s.name}

    @app.post("/get_reward", response_model=GetRewardResponse)
    async def get_reward(body: GetRewardRequest):
        """OpenRLHF's remote reward model: each query is the rendered prompt + response."""
        s.check_count(len(body.query), "query")
        fields, flags, _ = await s.texts(body.query)
        rewards = fields.pop("reward")
        return {
            "rewards": rewards,
            "scores": rewards,
            "truncated": flags,
            # per-query values OpenRLHF logs: a multi-output head's others too (an ensemble's reward_std, ...)
            "extra_logs": {"rankrm_truncated": [float(f) for f in flags], **fields},
        }


def add_classify_route(app: FastAPI, s: Served) -> None:
    """/classify (vLLM's path) and /v1/classify (SGLang's): the reward in the classification response shape."""

    async def classify(body: ClassifyRequest):
        """vLLM's /classify: probs [reward] with use_activation false, [sigmoid(reward)] otherwise."""
        cut = body.truncate_prompt_tokens
        if cut not in (None, -1) and cut < s.model.max_length:
            raise ApiError(
                422,
                f"truncate_prompt_tokens {cut} is below this model's max_length "
                f"{s.model.max_length}, and rankrm reads every input as it was trained",
                "truncate_prompt_tokens",
                "leave it out (inputs are cut from the left to max_length)",
            )
        if body.messages is not None:
            fields, flags, tokens = await s.pairs([prompt_value(body.messages[:-1])], [body.messages[-1].content])
        else:
            texts = [body.input] if isinstance(body.input, str) else body.input
            s.check_count(len(texts), "input")
            fields, flags, tokens = await s.texts(texts)
        rewards = fields.pop("reward")
        act = next(
            (a for a in (body.use_activation, body.activation) if a is not None), s.opts.problem_type != "regression"
        )
        data = [
            {
                "index": i,
                "label": "LABEL_0",
                "num_classes": 1,
                "truncated": f,
                "probs": [1 / (1 + math.exp(-r)) if act else r],
                **extras({k: v[i] for k, v in fields.items()}),  # optional fields beside vLLM's
            }
            for i, (r, f) in enumerate(zip(rewards, flags))
        ]
        return {
            "id": f"classify-{uuid.uuid4().hex}",
            "object": "list",
            "created": int(time.time()),
            "model": s.name,
            "data": data,
            "usage": {
                "prompt_tokens": tokens,
                "total_tokens": tokens,
                "completion_tokens": 0,
                "prompt_tokens_details": None,
            },
        }

    app.post("/classify", response_model=ClassifyResponse)(classify)
    app.post("/v1/classify", response_model=ClassifyResponse, include_in_schema=False)(classify)  # SGLang's path


def extras(fields: dict) -> dict:
    """A multi-output head's outputs beside the reward, as responses carry them: an ensemble's "reward_std" at the
    top, every other output under "outputs" (a name each); empty for the scalar head, whose answers stay as
    they were."""
    out = {"reward_std": fields["reward_std"]} if "reward_std" in fields else {}
    others = {k: v for k, v in fields.items() if k != "reward_std"}
    return {**out, "outputs": others} if others else out


def add_status_routes(app: FastAPI, s: Served) -> None:
    """/health, /info, /metrics."""

    @app.get("/health")
    async def health():
        """200 while the model thread runs (no API key needed)."""
        alive = s.batcher.alive
        return JSONResponse({"status": "ok" if alive else "stopped"}, status_code=200 if alive else 503)

    @app.get("/info")
    async def info():
        """The served model, its reading policy and normalization, the limits."""
        o = s.opts
        return {
            "model": s.name,
            "rankrm_version": s.version,
            "max_length": s.model.max_length,
            "reward_bias": s.model.reward_bias,
            "normalization": s.model.normalization,
            "head": s.model.head_spec.to_json(),
            "problem_type": o.problem_type,
            "eos_token": s.renderer.eos,
            "bos_prefix": s.renderer.bos,
            "limits": {"max_items": o.max_items, "max_body_bytes": o.max_body_bytes, "max_queue": o.max_queue},
            "batching": {
                "max_batch_tokens": o.max_batch_tokens,
                "max_wait_ms": o.max_wait_ms,
                "max_batch_requests": o.max_batch_requests,
            },
            "auth": o.api_key is not None,
        }

    @app.get("/metrics")
    async def prometheus():
        """Prometheus text format."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(s.metrics.registry), media_type=CONTENT_TYPE_LATEST)
