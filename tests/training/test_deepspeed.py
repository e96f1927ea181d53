"""DeepSpeed ZeRO-2 and ZeRO-3 (training/zero.py) on 2 CPU processes (gloo), started by `accelerate launch` with the
shipped recipes configs/accelerate/deepspeed_zero2.yaml and deepspeed_zero3.yaml, against one plain process on the
same data and seed: weights within 1e-5 and the same metrics, with a last step of 1 group for 2 processes (a
zero-weight pass) and micro-batch counts that differ between the processes (stand-in passes keep every
collective matched), for the scalar head and the ensemble, attributes (ZeRO-3) and ODIN (ZeRO-2) heads; the
checkpoint holds the one-process tensors (gathered from the engine's partitions) and resumes in one process; a
SIGTERM to the launcher + `--resume latest` by 2 ZeRO processes ends bit-identical to the uninterrupted run (both
stages); the saved model is a plain Hugging Face directory that scores as RewardModel.score; a diverging run's NaN
steps are dropped by the engine and counted. The launch, resume and signal helpers are test_sharding.py's
(launches.py).

Cost: two launches of 2 processes (one per stage, at the same time, each running its cases in sequence through
tests/multi_runs.py) while the 1-process references run here, then the signal test's two launches per stage:
~6 minutes on 2 busy cores. DeepSpeed's shared-memory op is not compiled (zero.skip_shm_comm): a first start on a
fresh machine costs no more than a later one."""

import json

import pytest
import torch
from conftest import ROOT
from launches import (
    flags,
    results,
    resumes_in_one_process,
    scores_as_reward_model,
    settings,
    sigterm_then_resume,
    train_launched_and_alone,
    two_train_as_one,
    weights,
    write_data,
)

from rankrm.errors import SettingsError
from rankrm.modeling.model import RewardModel
from rankrm.training.config import TrainConfig
from rankrm.training.run import train

pytest.importorskip("deepspeed")

RECIPES = {2: "deepspeed_zero2.yaml", 3: "deepspeed_zero3.yaml"}
CASES = {  # (stage, settings): padded and packed rows (kv trains unsharded only: refused)
    "zero2-packed": (2, dict(layout="packed", save_steps=3)),
    "zero3-packed": (3, dict(layout="packed", save_steps=3)),
    # frozen layers; padded rows give the processes 2 and 1 micro-batches in 6 steps
    "zero3-top-layer-padded": (3, dict(layout="padded", train_layers=1)),
    # heads: the ensemble's and the weighted attributes' reward row is re-tied after each step on the engine's
    # fp32 master copy (zero.tie_reward_row); ODIN reads the head after the forward (ZeRO-2 only: refused under 3),
    # one group per micro-batch (its length term is a correlation within a micro-batch: test_sharding.py)
    "zero3-ensemble": (3, dict(layout="packed", ensemble=2)),
    "zero3-attributes": (3, dict(layout="padded", attributes="auto", attribute_weights="goodness=1")),
    "zero2-odin": (2, dict(layout="packed", length_head=True, micro_batch_tokens=1)),
}
# a diverging run (as tests/training/test_reliability.py's): NaN gradients, which the engine drops
DIVERGING = dict(learning_rate=1e6, max_grad_norm=0, on_nonfinite="skip", max_steps=6, eval_steps=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """test_multiprocess's data: 19 training groups (steps of 3, a last step of 1), 9 held out."""
    return write_data(tmp_path_factory.mktemp("zero-data"))


@pytest.fixture(scope="module")
def runs(model_dirs, data, tmp_path_factory):
    """Each case trained by 2 launched ZeRO processes and by 1 plain process here; the diverging run by ZeRO-2."""
    root = tmp_path_factory.mktemp("zero")
    diverging = {2: [flags({**settings(model_dirs, data, root / "two-diverging"), **DIVERGING})]}
    return root, train_launched_and_alone(model_dirs, data, root, CASES, RECIPES, diverging, timeout=1500)


@pytest.mark.parametrize("name", list(CASES))
def test_two_zero_processes_train_as_one(runs, model_dirs, name):
    root, log = runs
    two_train_as_one(root, name, model_dirs)
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
    resumes_in_one_process(root, name, CASES[name][1], model_dirs, data, tmp_path)


def test_the_zero3_model_is_a_plain_hugging_face_model_that_scores_as_reward_model(runs):
    """The gathered save: transformers' AutoModelForSequenceClassification loads it (no rankrm code) and its logit
    at the completion's end is RewardModel.score's reward; the config (reward_bias included) is the 1-process one,
    and the same files are written."""
    root, _ = runs
    rm = scores_as_reward_model(root / "two-zero3-packed")
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
        (dict(length_head=True), "--length-head with DeepSpeed ZeRO-3: .*partitioned.*Fix: .*deepspeed_zero2.yaml"),
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


@pytest.mark.parametrize("name", ["zero2-packed", "zero3-packed"])
def test_sigterm_to_a_zero_launch_then_resume_is_bit_identical(runs, model_dirs, data, tmp_path, name):
    """SIGTERM to the launcher of a ZeRO run: both processes stop after the same step and the main process writes
    one checkpoint (gathered from the engine's partitions); `--resume latest` by 2 ZeRO processes (loaded into the
    partitions: the optimizer's master copy and the model's own weights) ends bit-identical to the uninterrupted
    2-process run."""
    root, _ = runs
    stage, kw = CASES[name]
    sigterm_then_resume(root, name, kw, RECIPES[stage], model_dirs, data, tmp_path)
