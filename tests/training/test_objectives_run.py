"""The objectives in a training run on tiny models: Plackett-Luce trains, margins travel from the file to the loss
and change nothing unless asked, centering is logged apart, and what Plackett-Luce cannot read is refused at start."""

import json
import logging

import pytest
import torch
from conftest import synthetic_groups, write_jsonl
from safetensors.torch import load_file

from rankrm.cli import main
from rankrm.data.encode import TextEncoder
from rankrm.data.prepare import prepare
from rankrm.modeling.batch import collate
from rankrm.training.config import TrainConfig
from rankrm.training.run import train


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth-objectives")
    return write_jsonl(d / "train.jsonl", synthetic_groups(96, 1)), write_jsonl(
        d / "eval.jsonl", synthetic_groups(32, 2)
    )


def cfg(model_dirs, train_file, eval_file, out, **kw):
    base = dict(
        model=str(model_dirs["llama-chat"]),
        train_data=[str(train_file)],
        eval_data=[str(eval_file)],
        output_dir=str(out),
        epochs=2,
        learning_rate=3e-3,
        batch_size=8,
        max_length=64,
        seed=0,
        plots=False,
    )
    return TrainConfig(**{**base, **kw})


def weights(run_dir):
    return load_file(str(run_dir / "model.safetensors"))


def test_plackett_luce_and_its_top_one_train_the_known_rule(model_dirs, synth, tmp_path):
    """Both lower the held-out log loss; they train a different model from the pairwise objective's."""
    pair = train(cfg(model_dirs, *synth, tmp_path / "pw"))
    for top in (0, 1):
        res = train(cfg(model_dirs, *synth, tmp_path / f"pl{top}", objective="plackett-luce", listwise_top=top))
        assert res["after"]["log_loss"] < res["before"]["log_loss"] - 0.05, (res["before"], res["after"])
        assert res["after"]["accuracy"] > 0.7
        w, p = weights(tmp_path / f"pl{top}"), weights(tmp_path / "pw")
        assert any(not torch.equal(w[n], p[n]) for n in w)
    assert pair["after"]["log_loss"] < pair["before"]["log_loss"]


def _with_margins(rows, value):
    """Native records with one margin per comparison of their ranks (K = 4: 6 comparisons)."""
    return [{**r, "margins": [value] * 6} for r in rows]


def test_margins_reach_the_batch_and_change_nothing_unless_asked(model_dirs, synth, tmp_path, caplog):
    """The same groups with margins: through the prepared store (version 3) into the batch's (N, N) pair_margins;
    trained with --margin-scale 0 (the default) the model is bit-identical to training without margins (and a
    note says they went unused); with --margin-scale 1 it differs."""
    rows = [json.loads(x) for x in synth[0].read_text().splitlines()]
    marg = write_jsonl(tmp_path / "margins.jsonl", _with_margins(rows, 0.5))
    store = prepare([str(marg)], TextEncoder.from_pretrained(str(model_dirs["llama-chat"]), 64), tmp_path / "store")
    g = store.view()[0]
    assert g.margins == [0.5] * 6
    b = collate([g], 0)
    w, l = g.comparisons()[0]
    assert b.pair_margins[w, l].item() == 0.5 and b.pair_margins.sum().item() == pytest.approx(3.0)
    with caplog.at_level(logging.INFO, logger="rankrm"):
        train(cfg(model_dirs, marg, synth[1], tmp_path / "unused"))
    assert "96 training groups give margins, unused (pass --margin-scale 1 to use them)" in caplog.text
    train(cfg(model_dirs, *synth, tmp_path / "none"))
    train(cfg(model_dirs, marg, synth[1], tmp_path / "used", margin_scale=1.0))
    a, n, u = weights(tmp_path / "unused"), weights(tmp_path / "none"), weights(tmp_path / "used")
    assert all(torch.equal(a[k], n[k]) for k in a)
    assert any(not torch.equal(u[k], n[k]) for k in u)


def test_centering_is_logged_apart_from_the_loss(model_dirs, synth, tmp_path, caplog):
    """--center-rewards: the trackers' scalars carry train/center_loss beside train/loss (C * mean (r_w + r_l)^2,
    so never negative), and the step log line shows it."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "c"
    args = ["train", "--model", str(model_dirs["llama-chat"]), "--train-data", str(synth[0]), "--eval-data"]
    args += [str(synth[1]), "--output-dir", str(out), "--epochs", "1", "--learning-rate", "3e-3", "--batch-size", "8"]
    args += ["--max-length", "64", "--no-plots", "--center-rewards", "0.5", "--report-to", "tensorboard"]
    with caplog.at_level(logging.INFO, logger="rankrm"):
        assert main(args) == 0
    assert any(
        r.getMessage().startswith("training: 12/12 steps") and ", center " in r.getMessage() for r in caplog.records
    )
    tags, centers = set(), []
    for f in (out / "logs").rglob("events.out.tfevents.*"):  # Accelerate's tracker may write more than one file
        acc = EventAccumulator(str(f))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
        centers += (
            [e.value for e in acc.Scalars("train/center_loss")] if "train/center_loss" in acc.Tags()["scalars"] else []
        )
    assert {"train/center_loss", "train/loss"} <= tags
    assert len(centers) == 12 and all(c > 0 for c in centers)


def test_plackett_luce_refuses_partial_orders_and_votes_at_start(model_dirs, synth, tmp_path, capsys):
    """Pairwise records of one prompt stating a > b and b > c but not a > c (a partial order; a > b and a > c would
    be a ranking with a tie) and a native group with repeated votes: exit 2, one line with the counts, the file and
    the fix, before any weights load."""
    rows = [
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
        {"prompt": "The sky is", "chosen": " green.", "rejected": " red."},
        {"prompt": "Grass is", "chosen": " green.", "rejected": " blue."},
    ] + [{"prompt": f"Say {i}", "chosen": f" {i}.", "rejected": " no."} for i in range(8)]
    f = write_jsonl(tmp_path / "pairs.jsonl", rows)
    votes = {"prompt": "Pick one.", "completions": ["a", "b"], "pairs": [[0, 1], [1, 0]], "counts": [2, 1]}
    v = write_jsonl(tmp_path / "votes.jsonl", [votes])
    args = ["train", "--model", str(model_dirs["llama-chat"]), "--train-data", str(f), str(v), "--eval-data"]
    args += [str(synth[1])]
    args += ["--output-dir", str(tmp_path / "x"), "--objective", "plackett-luce", "--max-length", "64"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "pairs.jsonl, " in err[0] and "votes.jsonl" in err[0]
    assert "has 2 of 11 training groups whose stated comparisons are not a ranking" in err[0]
    assert "(1 with votes that repeat or disagree, 1 stating only some pairs" in err[0]
    assert "Fix: train them with --objective pairwise (every vote and partial order counts there), or pass " in err[0]
    assert not (tmp_path / "x" / "model.safetensors").exists()


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--listwise-top", "1"], "--listwise-top 1 is Plackett-Luce's truncation"),
        (["--objective", "plackett-luce", "--margin-scale", "1"], "Plackett-Luce has no comparisons to shift"),
        (["--objective", "plackett-luce", "--regime", "shuffled-pairs"], "Plackett-Luce needs whole rankings"),
        (["--objective", "listwise"], "--objective 'listwise' unknown. Fix: use one of pairwise, plackett-luce"),
        (["--center-rewards", "-1"], "--center-rewards must be >= 0"),
    ],
)
def test_refused_objective_settings_exit_2_naming_the_setting(tmp_path, capsys, extra, says):
    assert main(["train", "--train-data", str(tmp_path / "t.jsonl"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
