"""`rankrm serve` as a real server process on a free loopback port, talked to over HTTP: every endpoint answers
RewardModel.score's reward, in the shapes OpenRLHF, verl/vLLM and TRL use; limits, auth, load and shutdown."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from rankrm.modeling.model import RewardModel

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

ROOT = Path(__file__).resolve().parents[2]
MAX_LENGTH = 48
PROMPTS = [
    "Name a colour.",
    [{"role": "user", "content": "Which colour is the sky?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3+3?"},
    ],
]
COMPLETIONS = ["blue", "The sky is blue on a clear day.", "", "6", "good dog " * 30]  # the last one is cut


def pairs():
    return [(p, c) for p in PROMPTS for c in COMPLETIONS]


@pytest.fixture(scope="module")
def rm_dir(model_dirs, tmp_path_factory):
    """A saved reward model (random head, a reward_bias) whose tokenizer pads with EOS before rankrm's fix."""
    torch.manual_seed(0)
    m = RewardModel.from_pretrained(str(model_dirs["llama-pad_eos"]))
    with torch.no_grad():
        m.head.weight.normal_()
    m.reward_bias = 0.25
    out = tmp_path_factory.mktemp("serve") / "rm"
    m.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def ref(rm_dir):
    return RewardModel.from_pretrained(str(rm_dir), max_length=MAX_LENGTH)


class Server:
    """`python -m rankrm serve` on port 0; stderr drained by a thread; killed in stop() whatever happens."""

    def __init__(self, model_dir, *flags, env=None, timeout=120):
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(env or {})}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rankrm",
                "serve",
                "--model",
                str(model_dir),
                "--port",
                "0",
                "--log-level",
                "warning",
                *flags,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self.url = None
        started = threading.Event()

        def drain():
            for line in self.proc.stderr:
                self.lines.append(line)
                if self.url is None and "rankrm serve:" in line and " on http://" in line:
                    self.url = line.split(" on ")[1].split()[0]
                    started.set()
            started.set()

        threading.Thread(target=drain, daemon=True).start()
        try:
            if not started.wait(timeout) or self.url is None:
                raise RuntimeError("server did not start:\n" + "".join(self.lines))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            raise RuntimeError("server never became healthy:\n" + "".join(self.lines))
        except BaseException:
            self.stop()
            raise

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


@pytest.fixture(scope="module")
def server(rm_dir):
    s = Server(
        rm_dir,
        "--max-length",
        str(MAX_LENGTH),
        "--max-items",
        "64",
        "--max-body-bytes",
        "100000",
        "--max-wait-ms",
        "20",
    )
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def close(a, b, tol=1e-5):
    assert len(a) == len(b)
    assert all(abs(x - y) <= tol for x, y in zip(a, b)), (a, b)


def expected_truncation(ref, items):
    return [len(ref.tokenizer(ref.render(p, c), add_special_tokens=False).input_ids) > MAX_LENGTH for p, c in items]


# -- score_groups in process ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama-chat", "qwen2-pad_eos", "gpt2-plain"])
def test_score_groups_equals_score(model_dirs, name):
    torch.manual_seed(1)
    m = RewardModel.from_pretrained(str(model_dirs[name]), max_length=MAX_LENGTH)
    with torch.no_grad():
        m.head.weight.normal_()
    groups = [COMPLETIONS, COMPLETIONS[:2], ["only one"]]
    nested = m.score_groups(PROMPTS, groups, batch_tokens=256)
    flat = m.score([p for p, cs in zip(PROMPTS, groups) for _ in cs], [c for cs in groups for c in cs])
    close([r for g in nested for r in g], flat)
    with pytest.raises(ValueError, match="a prompt has no completions"):
        m.score_groups(["a"], [[]])


# -- parity of every endpoint with RewardModel.score ---------------------------------------------------------------


def test_score_endpoint_equals_score(client, ref):
    items = pairs()
    r = client.post("/score", json={"items": [{"prompt": p, "completion": c} for p, c in items]})
    assert r.status_code == 200, r.text
    body = r.json()
    close(body["rewards"], ref.score([p for p, _ in items], [c for _, c in items]))
    assert body["truncated"] == expected_truncation(ref, items)
    assert any(body["truncated"]) and not all(body["truncated"])


def test_rank_endpoint_equals_score_and_orders_best_first(client, ref):
    r = client.post("/rank", json={"prompt": PROMPTS[1], "completions": COMPLETIONS})
    assert r.status_code == 200, r.text
    body = r.json()
    rewards, order = ref.rank(PROMPTS[1], COMPLETIONS)
    close(body["rewards"], rewards)
    assert body["order"] == order
    assert body["truncated"] == expected_truncation(ref, [(PROMPTS[1], c) for c in COMPLETIONS])

    groups = [{"prompt": p, "completions": COMPLETIONS[i:]} for i, p in enumerate(PROMPTS)]
    body = client.post("/rank", json={"groups": groups}).json()
    assert len(body["groups"]) == len(PROMPTS)
    for g, out in zip(groups, body["groups"]):
        close(out["rewards"], ref.score([g["prompt"]] * len(g["completions"]), g["completions"]))
        assert out["order"] == sorted(range(len(out["rewards"])), key=lambda i: -out["rewards"][i])


def test_get_reward_reads_openrlhf_queries_as_rendered(client, ref):
    """OpenRLHF posts {"query", "prompts", "labels"} and reads response["rewards"]; a query is the decoded
    sequence: the rendering of prompt + response, possibly with padding around it and with or without EOS."""
    items = pairs()
    eos, pad = ref.tokenizer.eos_token, ref.tokenizer.pad_token
    variants = [
        lambda t: t,
        lambda t: t[: -len(eos)],
        lambda t: pad * 3 + t + pad * 2,
        lambda t: eos * 2 + t + eos,
        lambda t: t + "\n",
    ]
    expected = ref.score([p for p, _ in items], [c for _, c in items])
    for make in variants:
        queries = [make(ref.render(p, c)) for p, c in items]
        r = client.post(
            "/get_reward", json={"query": queries, "prompts": [str(p) for p, _ in items], "labels": [None] * len(items)}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        close(body["rewards"], expected)
        assert body["scores"] == body["rewards"]
        assert body["truncated"] == expected_truncation(ref, items)
        assert body["extra_logs"]["rankrm_truncated"] == [float(t) for t in body["truncated"]]


def test_classify_answers_verl_and_vllm_shapes(client, ref, rm_dir):
    """verl renders prompt + reply with the reward model's chat template (no generation prompt), posts
    {"model", "input", "activation"/"use_activation": false} and reads data[-1]["probs"][-1]."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(rm_dir)
    p, c = PROMPTS[2], COMPLETIONS[1]
    text = tok.apply_chat_template(
        p + [{"role": "assistant", "content": c}], add_generation_prompt=False, tokenize=False
    )
    reward = ref.score([p], [c])[0]
    for flag in ("activation", "use_activation"):
        out = client.post("/classify", json={"model": str(rm_dir), "input": text, flag: False}).json()
        assert abs(out["data"][-1]["probs"][-1] - reward) <= 1e-5
        assert out["object"] == "list" and out["data"][0]["num_classes"] == 1 and out["usage"]["prompt_tokens"] > 0
    texts = [ref.render(q, d) for q, d in pairs()]
    out = client.post("/classify", json={"input": texts, "use_activation": False}).json()
    assert [d["index"] for d in out["data"]] == list(range(len(texts)))
    close([d["probs"][0] for d in out["data"]], ref.score([q for q, _ in pairs()], [d for _, d in pairs()]))
    sig = client.post("/classify", json={"input": text, "use_activation": True}).json()["data"][0]["probs"][0]
    assert abs(sig - 1 / (1 + math.exp(-reward))) <= 1e-6
    # rankrm saves problem_type "regression" in config.json, so the default (as in vLLM) is the raw reward
    assert json.loads((rm_dir / "config.json").read_text())["problem_type"] == "regression"
    raw = client.post("/classify", json={"input": text}).json()["data"][0]["probs"][0]
    assert abs(raw - reward) <= 1e-5
    chat = client.post(
        "/classify", json={"messages": p + [{"role": "assistant", "content": c}], "use_activation": False}
    ).json()
    assert abs(chat["data"][0]["probs"][0] - reward) <= 1e-5


def test_classify_default_follows_problem_type_regression(rm_dir, ref):
    """vLLM reads a one-label model raw by default only when config.json says problem_type regression."""
    from fastapi.testclient import TestClient

    from rankrm.serving.app import build_app
    from rankrm.serving.guard import ServeOptions

    app = build_app(ref, "rm", ServeOptions(problem_type="regression"), "test")
    with TestClient(app) as tc:
        out = tc.post("/classify", json={"input": ref.render("Hi", "Hello")}).json()
    assert abs(out["data"][0]["probs"][0] - ref.score(["Hi"], ["Hello"])[0]) <= 1e-5


def test_a_request_is_tokenized_once_and_the_model_scores_its_ids(ref, monkeypatch):
    """Every text a tokenizer reads during a /score and a /rank request, counted on the real tokenizer class: each
    completion is in one tokenizer input per request (before, the Renderer and RewardModel.score each tokenized
    it), and the rewards are RewardModel.score's."""
    from fastapi.testclient import TestClient

    from rankrm.serving.app import build_app
    from rankrm.serving.guard import ServeOptions

    cls = type(ref.tokenizer)
    seen: list[str] = []
    real = cls.__call__

    def counting(self, text=None, *args, **kw):
        seen.extend([text] if isinstance(text, str) else list(text or []))
        return real(self, text, *args, **kw)

    completions = ["azure", "The sky is blue on a clear day.", "a shade of grey", "good dog " * 30]  # none in another
    want = ref.score([PROMPTS[1]] * 4, completions)
    with TestClient(build_app(ref, "rm", ServeOptions(), "test")) as tc:
        monkeypatch.setattr(cls, "__call__", counting)
        items = [{"prompt": PROMPTS[1], "completion": c} for c in completions]
        got = tc.post("/score", json={"items": items}).json()["rewards"]
        per_score = {c: sum(c in t for t in seen) for c in completions}
        seen.clear()
        ranked = tc.post("/rank", json={"prompt": PROMPTS[1], "completions": completions}).json()["rewards"]
        per_rank = {c: sum(c in t for t in seen) for c in completions}
    assert per_score == per_rank == {c: 1 for c in completions}
    close(got, want)
    close(ranked, want)


def test_full_text_split_handles_bos_and_padding(ref):
    from rankrm.serving.engine import Renderer

    r = Renderer(ref)
    r.bos = "<|im_start|>"  # as for a tokenizer that adds a BOS
    eos, pad = ref.tokenizer.eos_token, ref.tokenizer.pad_token
    assert r.split_full_text(f"{pad}<|im_start|>abc {eos}\n{pad}") == "abc "
    assert r.split_full_text("abc \n") == "abc \n"  # whitespace is dropped only after an EOS


# -- clients ---------------------------------------------------------------------------------------------------------


def test_remote_reward_is_a_trl_reward_function(server, ref):
    from rankrm.serving.client import LocalReward, RewardClient

    prompts = [PROMPTS[1]] * 4 + [PROMPTS[0]] * 4 + [PROMPTS[1]]  # GRPO: each prompt's generations together
    completions = [[{"role": "assistant", "content": c}] for c in (COMPLETIONS * 2)[:9]]
    texts = [c[0]["content"] for c in completions]
    expected = ref.score(prompts, texts)
    remote = RewardClient(server.url, max_items=5)  # several requests, whole prompt runs each
    close(remote(prompts=prompts, completions=completions, completion_ids=None), expected)
    close(remote.score(prompts, texts), expected)
    close(LocalReward(ref)(prompts, completions), expected)
    assert remote.rank(PROMPTS[0], COMPLETIONS)[1] == ref.rank(PROMPTS[0], COMPLETIONS)[1]
    with pytest.raises(ValueError, match="422"):
        remote.score([3], ["x"])
    with pytest.raises(OSError, match="unreachable"):
        RewardClient("http://127.0.0.1:9", retries=1, backoff=0.01, timeout=2)(["a"], ["b"])


@pytest.fixture
def isolated_trainer_state():
    """TRL's trainer leaves process-wide state behind (Accelerate's AcceleratorState singleton, torch's thread count
    and deterministic flag, environment variables): a later in-process rankrm run then trained differently from the
    same run in a fresh process (the 1-process references of tests/training/test_multiprocess.py moved 1e-3 away).
    Everything it may set is put back."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    env, threads = dict(os.environ), torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    rng = torch.get_rng_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()
    os.environ.clear()
    os.environ.update(env)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    torch.set_rng_state(rng)


def test_trl_grpo_step_takes_its_reward_from_the_server(server, ref, model_dirs, tmp_path, isolated_trainer_state):
    """A real TRL GRPO step on a tiny policy whose reward function is RewardClient against the live server."""
    pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from rankrm.serving.client import RewardClient, completion_text

    calls = []

    class Recording(RewardClient):
        def __call__(self, prompts, completions, **kwargs):
            rewards = super().__call__(prompts, completions, **kwargs)
            calls.append((list(prompts), [completion_text(c) for c in completions], rewards))
            return rewards

    policy_dir = str(model_dirs["llama-chat"])
    data = datasets.Dataset.from_dict({"prompt": [PROMPTS[1], [{"role": "user", "content": "2+2?"}]]})
    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=6,
        max_steps=1,
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        report_to="none",
        seed=0,
    )
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(policy_dir),
        reward_funcs=Recording(server.url),
        args=args,
        train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(policy_dir),
    )
    trainer.train()
    assert calls and sum(len(r) for _, _, r in calls) >= 4
    for prompts, texts, rewards in calls:
        close(rewards, ref.score(prompts, texts))


# -- bad input: 4xx naming the field, never a 500 ----------------------------------------------------------------------

BAD = [
    ("/score", {"items": [{"prompt": 3, "completion": "x"}]}, 422, "items[0].prompt"),
    ("/score", {"items": [{"prompt": "a"}]}, 422, "items[0].completion"),
    ("/score", {"items": []}, 422, "items"),
    ("/score", [1, 2], 422, "body"),
    (
        "/score",
        {"items": [{"prompt": [{"role": "bot", "content": "x"}], "completion": "x"}]},
        422,
        "items[0].prompt[0].role",
    ),
    ("/rank", {"prompt": "a"}, 422, "body"),
    ("/rank", {"groups": [{"prompt": "a", "completions": []}]}, 422, "groups[0].completions"),
    ("/get_reward", {"query": "not a list"}, 422, "query"),
    ("/get_reward", {"query": ["a"], "prompts": ["a", "b"]}, 422, "body"),
    ("/classify", {"input": [1, 2, 3]}, 422, "input"),
    ("/classify", {"messages": [{"role": "user", "content": "hi"}]}, 422, "body"),
    ("/classify", {"input": "x", "truncate_prompt_tokens": 5}, 422, "truncate_prompt_tokens"),
    ("/score", {"items": [{"prompt": "a", "completion": "b"}] * 65}, 413, "items"),
]


@pytest.mark.parametrize("path,body,status,field", BAD)
def test_bad_requests_get_a_json_error_naming_the_field(client, path, body, status, field):
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == field and err["code"] == status and err["message"] and err["fix"]


def test_malformed_oversized_and_unknown_requests(client):
    r = client.post("/score", content=b'{"items": [', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "body"
    big = {"items": [{"prompt": "a", "completion": "x" * 60_000}, {"prompt": "a", "completion": "y" * 60_000}]}
    r = client.post("/score", json=big)
    assert r.status_code == 413 and "--max-body-bytes" in r.json()["error"]["message"]
    chunks = (json.dumps(big).encode()[i : i + 4096] for i in range(0, 130_000, 4096))  # no content-length
    r = client.post("/score", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert client.get("/score").status_code == 405
    assert client.post("/nope", json={}).status_code == 404
    assert client.get("/health").json() == {"status": "ok"}


def test_fuzzed_bodies_never_get_a_500(ref):
    """Random JSON, and bodies shaped like each endpoint's with random values inside: always an answer or a 4xx
    JSON error (in-process app; the same code as the server's)."""
    from fastapi.testclient import TestClient
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from rankrm.serving.app import build_app
    from rankrm.serving.guard import ServeOptions

    keys = st.sampled_from(
        [
            "items",
            "prompt",
            "completion",
            "completions",
            "groups",
            "query",
            "prompts",
            "labels",
            "input",
            "messages",
            "role",
            "content",
            "use_activation",
            "truncate_prompt_tokens",
        ]
    )
    leaf = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=12)
    )
    value = st.recursive(
        leaf,
        lambda c: st.lists(c, max_size=3) | st.dictionaries(keys | st.text(max_size=4), c, max_size=3),
        max_leaves=8,
    )
    message = st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "tool", "x"]), "content": st.text(max_size=12) | value}
    )
    prompt = st.text(max_size=12) | st.lists(message, max_size=3) | value
    bodies = st.one_of(
        value,
        st.fixed_dictionaries(
            {"items": st.lists(st.fixed_dictionaries({"prompt": prompt, "completion": value}), max_size=3)}
        ),
        st.fixed_dictionaries({"prompt": prompt, "completions": st.lists(st.text(max_size=8) | value, max_size=3)}),
        st.fixed_dictionaries({"query": st.lists(st.text(max_size=30), max_size=3), "labels": value}),
        st.fixed_dictionaries({"input": st.text(max_size=20) | value, "use_activation": value}),
        st.fixed_dictionaries({"messages": st.lists(message, max_size=3)}),
    )
    paths = st.sampled_from(["/score", "/rank", "/get_reward", "/classify", "/info"])

    with TestClient(build_app(ref, "rm", ServeOptions(), "test"), raise_server_exceptions=False) as tc:

        @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(path=paths, body=bodies)
        def check(path, body):
            r = tc.post(path, json=body)
            assert r.status_code < 500, (path, body, r.text)
            if r.status_code >= 400:
                assert r.json()["error"]["message"]

        check()


def test_info_and_metrics(client, ref):
    info = client.get("/info").json()
    assert info["max_length"] == MAX_LENGTH and abs(info["reward_bias"] - 0.25) < 1e-9
    assert info["rankrm_version"] and "normalization" in info and info["eos_token"] == ref.tokenizer.eos_token
    assert client.post("/score", json={"items": "not a list"}).status_code == 422  # counted by status below
    text = client.get("/metrics").text
    for name in (
        "rankrm_requests_total",
        "rankrm_errors_total",
        "rankrm_request_seconds_bucket",
        "rankrm_batch_requests_bucket",
        "rankrm_batch_sequences_bucket",
        "rankrm_tokens_total",
        "rankrm_tokens_per_second",
        "rankrm_requests_in_progress",
    ):
        assert name in text
    assert 'rankrm_errors_total{status="422"}' in text


# -- load: concurrent requests coalesce and each gets its own answer ---------------------------------------------------


def metric(text: str, name: str) -> float:
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )


def test_concurrent_requests_coalesce_and_match_sequential(client, server):
    items = pairs()
    bodies = [
        ("/score", {"items": [{"prompt": p, "completion": c} for p, c in items[i : i + 3]]})
        for i in range(0, len(items), 3)
    ]
    bodies += [("/rank", {"prompt": p, "completions": COMPLETIONS[i % 3 :]}) for i, p in enumerate(PROMPTS)]
    sequential = [client.post(path, json=b).json()["rewards"] for path, b in bodies]
    before = client.get("/metrics").text
    n_threads, per_thread, answers, errors = 16, 4, {}, []

    def work(t):
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for k in range(per_thread):
                j = (t * per_thread + k) % len(bodies)
                try:
                    r = c.post(bodies[j][0], json=bodies[j][1])
                    answers[(t, k)] = (j, r.status_code, r.json().get("rewards"))
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(answers) == n_threads * per_thread
    for j, status, rewards in answers.values():
        assert status == 200
        close(rewards, sequential[j])
    after = client.get("/metrics").text
    batches = metric(after, "rankrm_batch_requests_count") - metric(before, "rankrm_batch_requests_count")
    requests = metric(after, "rankrm_batch_requests_sum") - metric(before, "rankrm_batch_requests_sum")
    assert requests == n_threads * per_thread
    assert batches < requests  # some model calls served several requests


# -- safety: auth, a full queue, binding, shutdown ---------------------------------------------------------------------


def test_api_key_busy_queue_and_graceful_shutdown(rm_dir):
    from rankrm.serving.client import RewardClient

    s = Server(
        rm_dir,
        "--max-queue",
        "1",
        "--max-batch-requests",
        "2",
        "--max-wait-ms",
        "1000",
        env={"RANKRM_API_KEY": "s3cret"},
    )
    try:
        body = {"items": [{"prompt": "a", "completion": "b"}]}
        assert httpx.get(s.url + "/health").status_code == 200  # no key needed
        for path in ("/info", "/metrics"):
            assert httpx.get(s.url + path).status_code == 401
        r = httpx.post(s.url + "/score", json=body, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"]["param"] == "Authorization"
        assert httpx.post(s.url + "/score", json=body, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert len(RewardClient(s.url, api_key="s3cret")(["a"], ["b"])) == 1

        # a request waits up to 1 s for a second to share its batch, one more waits in the queue: the rest get 503
        statuses, heads = [], []

        def hit():
            r = httpx.post(s.url + "/score", json=body, headers={"Authorization": "Bearer s3cret"}, timeout=60)
            statuses.append(r.status_code)
            heads.append(r.headers.get("retry-after"))

        threads = [threading.Thread(target=hit) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses
        assert all(h == "1" for st, h in zip(statuses, heads) if st == 503)

        # SIGTERM while a request waits in the batcher: it is answered, then the process exits
        result = {}
        t = threading.Thread(
            target=lambda: result.update(
                r=httpx.post(s.url + "/score", json=body, headers={"Authorization": "Bearer s3cret"}, timeout=60)
            )
        )
        t.start()
        in_progress = re.compile(r"^rankrm_requests_in_progress 1\.0$", re.M)
        for _ in range(600):  # until the server holds the request (bounded: 30 s); a busy machine can take a while
            if in_progress.search(httpx.get(s.url + "/metrics", headers={"X-API-Key": "s3cret"}).text):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the request never reached the server")
        s.proc.send_signal(signal.SIGTERM)
        t.join(60)
        assert result["r"].status_code == 200 and len(result["r"].json()["rewards"]) == 1
        assert s.proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        s.stop()


def test_refuses_a_public_address_without_a_key(rm_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RANKRM_API_KEY", None)
    r = subprocess.run(
        [sys.executable, "-m", "rankrm", "serve", "--model", str(rm_dir), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 2 and "without an API key" in r.stderr


# -- bad input is 4xx; a bug is 500 with an id that the server's log holds -------------------------------------------

# ChatML, with two traps a test can spring: a message "refuse" makes the template refuse the conversation (jinja's
# TemplateError through raise_exception, as real templates refuse misordered roles); a message "boom" makes it
# divide by zero, a plain Python error at render time: a bug, as far as the server can tell.
TRAP_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['content'] == 'refuse' %}{{ raise_exception('this template takes no refusals') }}{% endif %}"
    "{% if m['content'] == 'boom' %}{{ (m['content'] | length) // 0 }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def trap_server(model_dirs, tmp_path_factory):
    m = RewardModel.from_pretrained(str(model_dirs["llama-chat"]))
    m.tokenizer.chat_template = TRAP_TEMPLATE
    out = tmp_path_factory.mktemp("serve-trap") / "rm"
    m.save_pretrained(out)
    s = Server(out)
    try:
        yield s
    finally:
        s.stop()


def test_a_refused_prompt_is_422_and_a_bug_while_rendering_is_500_with_an_id_in_the_log(trap_server):
    def score(content):
        return httpx.post(
            trap_server.url + "/score",
            json={"items": [{"prompt": [{"role": "user", "content": content}], "completion": "blue"}]},
            timeout=60,
        )

    ok = score("Name a colour.")
    assert ok.status_code == 200 and len(ok.json()["rewards"]) == 1
    refused = score("refuse").json()["error"]
    assert refused["code"] == 422 and refused["param"] == "prompt" and "id" not in refused
    assert "the model's chat template refuses it (TemplateError: this template takes no refusals)" in refused["message"]
    r = score("boom")
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["type"] == "server_error" and len(err["id"]) == 12 and f"internal error {err['id']}" in err["message"]
    assert "ZeroDivisionError" in err["message"] and "Traceback" not in r.text  # the client gets no traceback
    deadline = time.monotonic() + 10
    while not any(err["id"] in line for line in trap_server.lines) and time.monotonic() < deadline:
        time.sleep(0.05)
    log = "".join(trap_server.lines)
    assert f"internal error {err['id']} while rendering the prompts" in log
    tail = log[log.index(err["id"]) :]
    assert "Traceback (most recent call last):" in tail and "ZeroDivisionError" in tail
    assert score("Name a colour.").json()["rewards"] == ok.json()["rewards"]  # and the server serves on


def test_an_ensemble_serves_its_spread_where_each_shape_allows(model_dirs, ref):
    """A 3-member ensemble (members far apart): /score, /rank, /get_reward and /classify answer the reward
    (score_outputs' mean) with its reward_std and members beside the fields each shape requires; the scalar
    model's answers carry none of them."""
    from fastapi.testclient import TestClient

    from rankrm.modeling.heads import HeadSpec, tie_reward_row
    from rankrm.serving.app import ServeOptions, build_app

    torch.manual_seed(0)
    ens = RewardModel.from_pretrained(str(model_dirs["llama-chat"]), max_length=MAX_LENGTH, head=HeadSpec.ensemble(3))
    with torch.no_grad():
        ens.head.weight.normal_()
    tie_reward_row(ens.head, ens.head_spec)
    prompts, comps = [PROMPTS[1]] * 3, COMPLETIONS[:2] + ["a shade of grey"]
    want = ens.score_outputs(prompts, comps)
    assert min(want["reward_std"]) > 1e-3
    items = [{"prompt": p, "completion": c} for p, c in zip(prompts, comps)]
    texts = [ens.render(p, c) for p, c in zip(prompts, comps)]
    with TestClient(build_app(ens, "ens", ServeOptions(), "test")) as tc:
        score = tc.post("/score", json={"items": items}).json()
        rank = tc.post("/rank", json={"prompt": PROMPTS[1], "completions": comps}).json()
        groups = tc.post("/rank", json={"groups": [{"prompt": PROMPTS[1], "completions": comps}]}).json()
        openrlhf = tc.post("/get_reward", json={"query": texts}).json()
        vllm = tc.post("/classify", json={"input": texts, "use_activation": False}).json()
        info = tc.get("/info").json()
    for got in (score, rank, groups["groups"][0]):
        close(got["rewards"], want["reward"])
        close(got["reward_std"], want["reward_std"])
        close(got["outputs"]["member_2"], want["member_2"])
    close(openrlhf["rewards"], want["reward"])
    close(openrlhf["extra_logs"]["reward_std"], want["reward_std"])
    assert len(openrlhf["extra_logs"]["rankrm_truncated"]) == 3
    close([d["probs"][0] for d in vllm["data"]], want["reward"])
    close([d["reward_std"] for d in vllm["data"]], want["reward_std"])
    assert vllm["data"][0]["num_classes"] == 1 and info["head"]["kind"] == "ensemble"
    with TestClient(build_app(ref, "rm", ServeOptions(), "test")) as tc:
        plain = tc.post("/score", json={"items": items}).json()
        one = tc.post("/classify", json={"input": texts[0]}).json()["data"][0]
    assert set(plain) == {"rewards", "truncated", "model"}
    assert set(one) == {"index", "label", "probs", "num_classes", "truncated"}
