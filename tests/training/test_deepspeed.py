"""DeepSpeed ZeRO-2 and ZeRO-3 (training/zero.py) on 2 CPU processes (gloo), started by `accelerate launch` with the
shipped recipes configs/accelerate/deepspeed_zero2.yaml and deepspeed_zero3.yaml, against one plain process on the
same data and seed: weights within 1e-5 and the same metrics, with a last step of 1 group for 2 processes (a
zero-weight pass) and micro-batch counts that differ between the processes (stand-in passes keep every
collective matched); the checkpoint holds the one-process tensors (gathered from the engine's partitions) and
resumes in one process, and in 2 ZeRO processes bit-identical to the uninterrupted run; the saved model is a plain
Hugging Face directory that scores as RewardModel.score; a diverging run's NaN steps are dropped by the engine and
counted.

Cost: two launches of 2 processes (one per stage, at the same time, each running its cases in sequence through
tests/multi_runs.py) while the 1-process references run here, then two resuming launches: ~6 minutes on 2 cores
under a load average of ~20 (other sessions' tests). The first DeepSpeed start on a machine also compiles
DeepSpeed's shared-memory op (minutes, once; cached in ~/.cache/torch_extensions)."""

import json
import shutil

import pytest
import torch
from conftest import ROOT, synthetic_groups, write_jsonl
from safetensors.torch import load_file
from test_multiprocess import flags, launch, results, settings, weights

from rankrm.errors import SettingsError
from rankrm.training.checkpoint import verify
from rankrm.training.config import TrainConfig
from rankrm.training.run import train

pytest.importorskip("deepspeed")

RECIPES = {2: "deepspeed_zero2.yaml", 3: "deepspeed_zero3.yaml"}
CASES = {  # (stage, settings): padded and packed rows (kv trains unsharded only: refused)
    "zero2-packed": (2, dict(layout="packed", save_steps=3)),
    "zero3-packed": (3, dict(layout="packed", save_steps=3)),
    # frozen layers; padded rows give the processes 2 and 1 micro-batches in 6 steps
    "zero3-top-layer-padded": (3, dict(layout="padded", train_layers=1)),
}
# a diverging run (as tests/training/test_reliability.py's): NaN gradients, which the engine drops
DIVERGING = dict(learning_rate=1e6, max_grad_norm=0, on_nonfinite="skip", max_steps=6, eval_steps=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """test_multiprocess's data: 19 training groups (steps of 3, a last step of 1), 9 held out."""
    d = tmp_path_factory.mktemp("zero-data")
    return write_jsonl(d / "train.jsonl", synthetic_groups(19, 1)), write_jsonl(
        d / "eval.jsonl", synthetic_groups(9, 2)
    )


@pytest.fixture(scope="module")
def runs(model_dirs, data, tmp_path_factory):
    """Each case trained by 2 launched ZeRO processes and by 1 plain process here; the diverging run by ZeRO-2."""
    root = tmp_path_factory.mktemp("zero")
    procs = []
    for stage, config in RECIPES.items():
        arglists = [
            flags(settings(model_dirs, data, root / f"two-{name}", **kw))
            for name, (s, kw) in CASES.items()
            if s == stage
        ]
        if stage == 2:
            arglists.append(flags({**settings(model_dirs, data, root / "two-diverging"), **DIVERGING}))
        (root / f"zero{stage}.json").write_text(json.dumps(arglists))
        script = [str(ROOT / "tests" / "training" / "multi_runs.py")]
        procs.append(launch([str(root / f"zero{stage}.json")], script, config))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched process runs (OMP_NUM_THREADS=1): the same float sums
    try:
        for name, (_, kw) in CASES.items():
            train(TrainConfig(**settings(model_dirs, data, root / f"one-{name}", **kw)))
    finally:
        torch.set_num_threads(threads)
        logs = [p.communicate(timeout=1500) for p in procs]
    for p, (_, err) in zip(procs, logs):
        assert p.returncode == 0, err[-3000:]
    return root, "".join(err for _, err in logs)


@pytest.mark.parametrize("name", list(CASES))
def test_two_zero_processes_train_as_one(runs, model_dirs, name):
    root, log = runs
    start = load_file(str(model_dirs["llama-chat"] / "model.safetensors"))
    one, two = root / f"one-{name}", root / f"two-{name}"
    a, b = weights(one), weights(two)
    assert a.keys() == b.keys()
    for n in a:
        assert b[n].dtype == a[n].dtype, n
        torch.testing.assert_close(b[n], a[n], rtol=0, atol=1e-5, msg=n)
    backbone = [n for n in start if n in b]
    trained = [n for n in backbone if not torch.equal(b[n], start[n])]
    assert len(trained) == (10 if "top-layer" in name else len(backbone))  # top layer: its 9 tensors + final norm
    ra, rb = results(one), results(two)
    assert rb["before"] == ra["before"]  # exact: each reward of the spread evaluation is the one process's
    assert rb["after"]["accuracy"] == ra["after"]["accuracy"]
    assert rb["after"]["log_loss"] == pytest.approx(ra["after"]["log_loss"], abs=1e-6)
    assert [h["step"] for h in rb["history"]] == [h["step"] for h in ra["history"]] == [3, 6]
    for ha, hb in zip(ra["history"], rb["history"]):
        assert hb["accuracy"] == ha["accuracy"]
        assert hb["train_loss"] == pytest.approx(ha["train_loss"], abs=1e-6)
    assert rb["steps"] == ra["steps"] == 7
    stage = CASES[name][0]
    runs_of_stage = sum(s == stage for s, _ in CASES.values()) + (stage == 2)  # + the diverging run
    assert log.count(f"DeepSpeed ZeRO-{stage} over 2 processes: each holds 1/2 of ") == runs_of_stage


@pytest.mark.parametrize("name", ["zero2-packed", "zero3-packed"])
def test_a_zero_checkpoint_holds_the_one_process_state_and_resumes_in_one_process(
    runs, model_dirs, data, tmp_path, name
):
    """The checkpoint written by 2 ZeRO processes at step 3 has the tensors of the 1-process run's step-3
    checkpoint (weights and AdamW moments within 1e-5, the same names, the same step count); resumed by one
    plain process it ends where the uninterrupted 1-process run ends."""
    root, _ = runs
    mine, theirs = (root / f"{w}-{name}" / "checkpoints" / "step-3" for w in ("two", "one"))
    verify(mine)
    for f in ("trainable.safetensors", "optimizer.safetensors"):
        a, b = load_file(str(theirs / f)), load_file(str(mine / f))
        assert a.keys() == b.keys(), f
        for n in a:
            torch.testing.assert_close(b[n], a[n], rtol=0, atol=1e-5, msg=f"{f}: {n}")
    out = tmp_path / "resumed"
    shutil.copytree(mine, out / "checkpoints" / "step-3")
    cfg = settings(model_dirs, data, out, **CASES[name][1], resume="latest")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(TrainConfig(**cfg))
    finally:
        torch.set_num_threads(threads)
    a, b = weights(root / f"one-{name}"), weights(out)
    for n in a:
        torch.testing.assert_close(b[n], a[n], rtol=0, atol=1e-5, msg=n)


def test_the_zero3_model_is_a_plain_hugging_face_model_that_scores_as_reward_model(runs):
    """The gathered save: transformers' AutoModelForSequenceClassification loads it (no rankrm code) and its logit
    at the completion's end is RewardModel.score's reward; the config (reward_bias included) is the 1-process one,
    and the same files are written."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rankrm.modeling.model import RewardModel

    root, _ = runs
    path = root / "two-zero3-packed"
    hf = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    rm = RewardModel.from_pretrained(str(path))
    prompts = [[{"role": "user", "content": "Say something good, please."}]] * 3
    completions = ["good good good", "bad red cat", "good dog"]
    ours = rm.score(prompts, completions)
    for p, c, r in zip(prompts, completions, ours):
        enc = tok(rm.render(p, c), add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            assert hf(**enc).logits[0, 0].item() == pytest.approx(r, abs=1e-5)
    for name in ("config.json", "rankrm.json"):  # reward_bias: in config.json when not 0
        a, b = (json.loads((root / f"{w}-zero3-packed" / name).read_text()) for w in ("one", "two"))
        assert a == b, name
    assert rm.reward_bias == RewardModel.from_pretrained(str(root / "one-zero3-packed")).reward_bias
    files = [sorted(f.name for f in (root / f"{w}-zero3-packed").iterdir()) for w in ("one", "two")]
    assert files[0] == files[1]


def test_nan_gradients_under_zero_are_dropped_by_the_engine_and_counted(runs):
    """learning rate 1e6 without clipping: the gradients turn NaN; the engine drops those updates, rankrm counts
    them (--on-nonfinite skip) and the saved weights are finite."""
    root, _ = runs
    assert results(root / "two-diverging")["skipped_nonfinite_steps"] >= 1
    for t in weights(root / "two-diverging").values():
        assert torch.isfinite(t).all()


def test_the_stage_is_the_recipes_and_unhonoured_settings_are_refused():
    """The shipped recipes, read back with Accelerate's own config parser, name stages 2 and 3 without zero.Init;
    what rankrm would not apply is refused with the setting and the fix."""
    from accelerate.commands.config.config_args import load_config_from_file

    from rankrm.training.zero import stage_from_launch

    for stage, recipe in RECIPES.items():
        ds = load_config_from_file(str(ROOT / "configs" / "accelerate" / recipe)).deepspeed_config
        assert ds["zero_stage"] == stage and ds["zero3_init_flag"] is False and "gradient_clipping" not in ds
    on = {"ACCELERATE_USE_DEEPSPEED": "true"}
    assert stage_from_launch(1.0, {}) is None
    assert stage_from_launch(1.0, {**on, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}) == 2
    z3 = {**on, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "ACCELERATE_DEEPSPEED_ZERO3_INIT": "false"}
    assert stage_from_launch(1.0, z3) == 3
    assert stage_from_launch(0.5, {**z3, "ACCELERATE_GRADIENT_CLIPPING": "0.5"}) == 3
    for env, message in [
        ({**on, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "1"}, "zero_stage: 1 is not run by rankrm.*ddp.yaml"),
        ({**on, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "zero3_init_flag: true.*Fix: set it to false"),
        ({**z3, "ACCELERATE_GRADIENT_CLIPPING": "2.0"}, "gradient_clipping: 2.0 in the recipe.*--max-grad-norm is 1"),
        ({**z3, "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"}, "gradient_accumulation_steps.*Fix: set it to 1"),
        ({**z3, "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu"}, "offload_optimizer_device: cpu.*none"),
        ({**z3, "ACCELERATE_DEEPSPEED_CONFIG_FILE": "ds.json"}, "deepspeed_config_file in the recipe"),
        ({**z3, "ACCELERATE_MIXED_PRECISION": "fp16"}, "fp16 with DeepSpeed is not run"),
    ]:
        with pytest.raises(SettingsError, match=message):
            stage_from_launch(1.0, env)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(lora_r=4), "--lora-r with DeepSpeed ZeRO-3.*Fix: launch LoRA with configs/accelerate/ddp.yaml"),
        (dict(layout="kv"), "--layout kv with DeepSpeed ZeRO-3.*Fix: --layout auto"),
    ],
)
def test_what_zero_cannot_run_is_refused_before_anything_loads(model_dirs, data, tmp_path, monkeypatch, kw, message):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO3_INIT", "false")
    out = tmp_path / "refused"
    with pytest.raises(SettingsError, match=message):
        train(TrainConfig(**settings(model_dirs, data, out, **kw)))
    assert not out.exists()


def test_zero_processes_resume_their_own_checkpoint_bit_identical(runs, model_dirs, data, tmp_path):
    """Each stage's step-3 checkpoint resumed by 2 ZeRO processes (`--resume latest`: loaded into the engine's
    partitions, both the optimizer's master copy and the model's own weights) ends bit-identical to the
    uninterrupted 2-process run."""
    root, _ = runs
    procs = {}
    for stage, name in ((2, "zero2-packed"), (3, "zero3-packed")):
        out = tmp_path / name
        shutil.copytree(root / f"two-{name}" / "checkpoints" / "step-3", out / "checkpoints" / "step-3")
        args = flags(settings(model_dirs, data, out, **CASES[name][1], resume="latest"))
        procs[name] = (out, launch(args, ["-m", "rankrm", "train"], RECIPES[stage]))
    for name, (out, proc) in procs.items():
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
        assert "resumed from" in err and "at step 3" in err
        a, b = weights(root / f"two-{name}"), weights(out)
        assert all(torch.equal(a[n], b[n]) for n in a), f"{name}: resumed run differs from the uninterrupted one"
        assert results(out)["after"] == results(root / f"two-{name}")["after"]
