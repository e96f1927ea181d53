"""Two processes (DDP over gloo, started by `accelerate launch` with the shipped configs/accelerate/ddp.yaml) against
one: the same metrics and weights within 1e-5 for every layout, the frozen-layer cache, LoRA and the shuffled-pairs
regime, with a last step of 1 group for 2 processes; a SIGTERM to the launcher reaches both processes and leaves one
checkpoint, from which --resume ends bit-identical to the uninterrupted 2-process run. Every shipped recipe that can
start here is started: ddp_multinode.yaml as two machines of one process on this host; the FSDP recipes train in
tests/training/test_sharding.py, the DeepSpeed ones in tests/training/test_deepspeed.py.

Cost: one launch runs the four configurations in sequence (tests/multi_runs.py), one is stopped by the signal and
one resumes: three starts of 2 processes (~20 s each on 2 busy cores) and four 1-process references in this process;
then the two-machine run (~30 s).
The references run on one thread, as each launched process does (accelerate sets OMP_NUM_THREADS=1): a float sum
split over other threads rounds differently (~1e-9), and the held-out metrics before training are then equal to the
last bit, which shows the evaluation spread over the processes computes what one process does."""

import pytest
import torch
from launches import (
    flags,
    free_port,
    launch,
    results,
    settings,
    sigterm_then_resume,
    train_launched_and_alone,
    weights,
    write_data,
)

from rankrm.errors import SettingsError
from rankrm.training.checkpoint import checkpoints
from rankrm.training.config import TrainConfig
from rankrm.training.run import train

CASES = {
    "padded-shuffled-pairs": dict(layout="padded", regime="shuffled-pairs"),
    "packed-frozen-cache": dict(layout="packed", train_layers=1),
    "kv-lora": dict(layout="kv", lora_r=4, lora_alpha=8.0),
    "auto": dict(layout="auto"),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("mp"))


@pytest.fixture(scope="module")
def runs(model_dirs, data, tmp_path_factory):
    """Each case trained by 2 launched processes (one launch for all) and by 1 process here."""
    root = tmp_path_factory.mktemp("runs")
    cases = {name: ("ddp", kw) for name, kw in CASES.items()}
    return root, train_launched_and_alone(model_dirs, data, root, cases, {"ddp": "ddp.yaml"}, timeout=600)


@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_train_as_one(runs, name):
    root, log = runs
    one, two = root / f"one-{name}", root / f"two-{name}"
    a, b = weights(one), weights(two)
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(b[n], a[n], rtol=0, atol=1e-5, msg=n)
    ra, rb = results(one), results(two)
    assert rb["before"] == ra["before"]  # exact: the spread evaluation computes each reward as one process does
    assert rb["after"]["accuracy"] == ra["after"]["accuracy"]
    assert rb["after"]["log_loss"] == pytest.approx(ra["after"]["log_loss"], abs=1e-6)
    assert [h["step"] for h in rb["history"]] == [h["step"] for h in ra["history"]] == [3, 6]
    for ha, hb in zip(ra["history"], rb["history"]):
        assert hb["accuracy"] == ha["accuracy"]
        assert hb["log_loss"] == pytest.approx(ha["log_loss"], abs=1e-6)
        assert hb["train_loss"] == pytest.approx(ha["train_loss"], abs=1e-6)  # the mean over all the step's groups
    assert rb["steps"] == ra["steps"] == 7
    if name == "packed-frozen-cache":
        assert log.count("frozen layers run once per sequence") == 1  # the cache ran (the main process says so)


def test_sigterm_to_the_launcher_stops_both_processes_with_one_checkpoint_then_resume_is_bit_identical(
    runs, model_dirs, data, tmp_path
):
    """The launcher (torchrun's agent) passes SIGTERM to both processes; they agree to stop after the step, the main
    process alone writes checkpoint step-1; `--resume latest` by 2 processes ends bit-identical to the run above."""
    root, _ = runs
    sigterm_then_resume(root, "auto", CASES["auto"], "ddp.yaml", model_dirs, data, tmp_path)


def test_the_multinode_recipe_two_machines_of_one_process_on_this_host_train_as_one(runs, model_dirs, data, tmp_path):
    """configs/accelerate/ddp_multinode.yaml started as two machines (two launchers, machine ranks 0 and 1, this
    host's address), one process each, into one output directory as on a shared file system: the weights of the
    1-process run within 1e-5, the same metrics and checkpoints. Each process is its machine's local main process;
    only the global main one writes (two writers would collide on the run lock)."""
    root, _ = runs
    out = tmp_path / "multinode"
    args = flags(settings(model_dirs, data, out, **CASES["auto"]))
    port = free_port()
    procs = [
        launch(
            args,
            ["-m", "rankrm", "train"],
            "ddp_multinode.yaml",
            port,
            ["--machine_rank", str(rank), "--main_process_ip", "127.0.0.1"],
        )
        for rank in (0, 1)
    ]
    logs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, logs):
        assert p.returncode == 0, err[-3000:]
    assert all("after training:" in err for _, err in logs)  # each machine's first process logs (the others quiet)
    a, b = weights(root / "one-auto"), weights(out)
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(b[n], a[n], rtol=0, atol=1e-5, msg=n)
    ra, rb = results(root / "one-auto"), results(out)
    assert rb["before"] == ra["before"]
    assert rb["after"]["accuracy"] == ra["after"]["accuracy"]
    assert rb["after"]["log_loss"] == pytest.approx(ra["after"]["log_loss"], abs=1e-6)
    assert [c.name for c in checkpoints(out / "checkpoints")] == [
        c.name for c in checkpoints(root / "one-auto" / "checkpoints")
    ]


def test_a_launch_that_would_not_train_as_asked_is_refused(monkeypatch):
    """Processes that do not see each other (`accelerate launch --cpu --num_processes 2` starts one; `--multi_gpu`
    without a GPU starts 2 that each run alone)."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from rankrm.training.run import check_launch

    alone = SimpleNamespace(num_processes=1, distributed_type=DistributedType.NO)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SettingsError, match="launched as 2 processes, but Accelerate runs 1.*ACCELERATE_USE_CPU=1"):
        check_launch(alone)
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_launch(alone)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # rankrm shards itself (training/sharding.py)
    check_launch(alone)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # runs: tests/training/test_deepspeed.py
    check_launch(alone)


def test_dtype_bf16_loads_frozen_weights_in_bf16_and_trains_fp32_master_weights(model_dirs, data, tmp_path):
    """--dtype bf16 with --train-layers 1: the frozen layers stay bf16 (half their memory), the trained top layer
    and head are fp32 for AdamW, the forward runs under bf16 autocast, and the run learns."""
    cfg = TrainConfig(
        **{**settings(model_dirs, data, tmp_path / "bf16", train_layers=1, dtype="bf16"), "eval_steps": 0}
    )
    assert cfg.autocast_bf16
    res = train(cfg)
    assert res["after"]["log_loss"] < res["before"]["log_loss"]
    saved = weights(tmp_path / "bf16")  # as written: each tensor in the precision it trained in
    assert saved["model.layers.0.mlp.up_proj.weight"].dtype == torch.bfloat16  # frozen
    assert saved["model.layers.1.mlp.up_proj.weight"].dtype == torch.float32  # trained
    assert saved["score.weight"].dtype == torch.float32
    with pytest.raises(SettingsError, match="--dtype 'fp16' unknown"):
        TrainConfig(**{**settings(model_dirs, data, tmp_path / "x"), "dtype": "fp16"})
