"""FSDP2 (training/sharding.py) on 2 CPU processes (gloo), started by `accelerate launch` with the shipped recipes
configs/accelerate/fsdp_full_shard.yaml and fsdp_shard_grad_op.yaml, against one unsharded process on the same data
and seed: weights within 1e-5 and the same metrics, with a last step of 1 group for 2 processes (the second takes
part with a zero-weight pass) and micro-batch counts that differ between the processes (stand-in passes keep
every collective matched), for the scalar head and the ensemble, ODIN and attributes heads; the saved model is a
plain Hugging Face directory that transformers loads and that scores as RewardModel.score; a checkpoint holds the
one-process state, so a sharded checkpoint resumes in one process as that process's own would, and a SIGTERM to
the launcher + `--resume latest` ends bit-identical to the uninterrupted sharded run (launches.py, shared with
test_deepspeed.py).

Cost: two launches of 2 processes (one per recipe, at the same time, each running its cases in sequence through
tests/multi_runs.py) while the 1-process references run here, then the signal test's two launches: ~3-4 minutes
on 2 busy cores."""

import json

import pytest
from conftest import ROOT
from launches import (
    resumes_in_one_process,
    scores_as_reward_model,
    settings,
    sigterm_then_resume,
    train_launched_and_alone,
    two_train_as_one,
    write_data,
)

from rankrm.training.config import TrainConfig
from rankrm.training.run import train

RECIPES = {"full": "fsdp_full_shard.yaml", "grad-op": "fsdp_shard_grad_op.yaml"}
CASES = {  # (recipe, layout settings): padded and packed rows (kv trains unsharded only: refused under FSDP)
    "full-packed": ("full", dict(layout="packed", save_steps=3)),
    # frozen layers (their cache is off under FSDP); padded rows give the processes 2 and 1 micro-batches in 6 steps
    "full-top-layer-padded": ("full", dict(layout="padded", train_layers=1)),
    "full-padded-shuffled-pairs": ("full", dict(layout="padded", regime="shuffled-pairs")),
    "grad-op-auto": ("grad-op", dict(layout="auto", gradient_checkpointing=True)),  # auto: padded or packed
    # heads: the ensemble's and the weighted attributes' reward row is re-tied after each step from rows that
    # FSDP2 holds sharded (sharding.tie_reward_row); ODIN's orthogonality term reads the head after the forward.
    # ODIN's length term is a correlation over a micro-batch's completions: one group per micro-batch (1 token:
    # each group alone) makes the micro-batches the same however the groups are dealt to the processes
    "full-ensemble": ("full", dict(layout="packed", ensemble=2)),
    "full-odin": ("full", dict(layout="padded", length_head=True, micro_batch_tokens=1)),
    "grad-op-attributes": ("grad-op", dict(layout="packed", attributes="auto", attribute_weights="goodness=1")),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """test_multiprocess's data: 19 training groups (steps of 3, a last step of 1), 9 held out."""
    return write_data(tmp_path_factory.mktemp("fsdp-data"))


@pytest.fixture(scope="module")
def runs(model_dirs, data, tmp_path_factory):
    """Each case trained by 2 launched FSDP2 processes and by 1 unsharded process here."""
    root = tmp_path_factory.mktemp("sharded")
    return root, train_launched_and_alone(model_dirs, data, root, CASES, RECIPES)


@pytest.mark.parametrize("name", list(CASES))
def test_two_sharded_processes_train_as_one(runs, model_dirs, name):
    root, log = runs
    two_train_as_one(root, name, model_dirs)
    recipe = CASES[name][0]
    what = "full shard" if recipe == "full" else "shard-grad-op"
    runs_of_recipe = sum(r == recipe for r, _ in CASES.values())  # each run of the launch sharded, not only the first
    assert log.count(f"FSDP2 {what} over 2 processes: each holds 1/2 of ") == runs_of_recipe
    if name == "full-top-layer-padded":
        assert "the frozen-layer cache is off under sharding" in log


def test_a_sharded_checkpoint_holds_the_one_process_state_and_resumes_in_one_process(runs, model_dirs, data, tmp_path):
    """The checkpoint written by 2 sharded processes at step 3 has the tensors of the 1-process run's step-3
    checkpoint (weights and AdamW moments within 1e-5, the same names); resumed by one unsharded process it ends
    where the uninterrupted 1-process run ends."""
    root, _ = runs
    resumes_in_one_process(root, "full-packed", CASES["full-packed"][1], model_dirs, data, tmp_path)


def test_the_sharded_model_is_a_plain_hugging_face_model_that_scores_as_reward_model(runs):
    """The gathered save: transformers' AutoModelForSequenceClassification loads it (no rankrm code) and its logit
    at the completion's end is RewardModel.score's reward; the config (reward_bias included) is the 1-process one."""
    root, _ = runs
    scores_as_reward_model(root / "two-full-packed")
    config = [json.loads((root / f"{w}-full-packed" / "config.json").read_text()) for w in ("one", "two")]
    assert config[0] == config[1]


def test_sigterm_to_a_sharded_launch_then_resume_is_bit_identical(runs, model_dirs, data, tmp_path):
    """SIGTERM to the launcher of a full-shard run: both processes stop after the same step and the main process
    writes one checkpoint (the gathered state); `--resume latest` by 2 sharded processes ends bit-identical to the
    uninterrupted sharded run."""
    root, _ = runs
    sigterm_then_resume(root, "full-packed", CASES["full-packed"][1], RECIPES["full"], model_dirs, data, tmp_path)


RECIPE_ENV = {  # what `accelerate launch` sets from each shipped recipe (and from FSDP1 recipes)
    "fsdp_full_shard.yaml": {"FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "true"},
    "fsdp_shard_grad_op.yaml": {"FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "false"},
}


def test_the_engine_is_the_one_the_recipe_names_and_unhonoured_settings_are_refused():
    """The shipped recipes' settings, read back with Accelerate's own config parser, give full shard and
    shard-grad-op; an FSDP1 recipe's strategy maps to the same; what rankrm would not apply is refused."""
    from accelerate.commands.config.config_args import load_config_from_file

    from rankrm.training.sharding import FULL, GRAD_OP, Sharding, engine_from_launch

    for recipe, env in RECIPE_ENV.items():
        fsdp = load_config_from_file(str(ROOT / "configs" / "accelerate" / recipe)).fsdp_config
        assert str(fsdp["fsdp_version"]) == env["FSDP_VERSION"]
        assert str(fsdp["fsdp_reshard_after_forward"]).lower() == env["FSDP_RESHARD_AFTER_FORWARD"]
    on = {"ACCELERATE_USE_FSDP": "true"}
    assert engine_from_launch({}) is None  # DDP
    assert engine_from_launch({**on, **RECIPE_ENV["fsdp_full_shard.yaml"]}) == Sharding(FULL, True)
    assert engine_from_launch({**on, **RECIPE_ENV["fsdp_shard_grad_op.yaml"]}) == Sharding(GRAD_OP, False)
    assert engine_from_launch({**on, "FSDP_SHARDING_STRATEGY": "SHARD_GRAD_OP"}) == Sharding(GRAD_OP, False)
    assert engine_from_launch({**on, "FSDP_SHARDING_STRATEGY": "FULL_SHARD"}) == Sharding(FULL, True)
    with pytest.raises(ValueError, match="fsdp_sharding_strategy: HYBRID_SHARD is not run by rankrm.*ddp.yaml"):
        engine_from_launch({**on, "FSDP_SHARDING_STRATEGY": "HYBRID_SHARD"})
    with pytest.raises(ValueError, match="fsdp_offload_params: true.*Fix: set it to false"):
        engine_from_launch({**on, **RECIPE_ENV["fsdp_full_shard.yaml"], "FSDP_OFFLOAD_PARAMS": "true"})
    with pytest.raises(ValueError, match="fsdp_activation_checkpointing: true.*--gradient-checkpointing"):
        engine_from_launch({**on, **RECIPE_ENV["fsdp_full_shard.yaml"], "FSDP_ACTIVATION_CHECKPOINTING": "true"})


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(lora_r=4), "--lora-r with FSDP.*Fix: launch LoRA with configs/accelerate/ddp.yaml"),
        (dict(layout="kv"), "--layout kv with FSDP.*Fix: --layout auto"),
    ],
)
def test_what_sharding_cannot_run_is_refused_before_anything_loads(
    model_dirs, data, tmp_path, monkeypatch, kw, message
):
    """LoRA and the kv layout under an FSDP recipe: refused with the fix before the data or the model loads, and
    nothing is written."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    out = tmp_path / "refused"
    with pytest.raises(ValueError, match=message):
        train(TrainConfig(**settings(model_dirs, data, out, **kw)))
    assert not out.exists()
