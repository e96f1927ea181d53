"""`rankrm score`: streamed scoring of JSONL files, in input order, nothing written on bad input."""

import json

import pytest
from conftest import write_jsonl

from rankrm.cli import main
from rankrm.modeling.model import RewardModel


def test_score_file_keeps_order_and_fields_across_chunks(model_dirs, tmp_path):
    m = RewardModel.from_pretrained(str(model_dirs["llama-chat"]))
    m.save_pretrained(tmp_path / "rm")  # a saved reward model: its head is fixed, unlike a fresh one's
    rows = [{"id": i, "prompt": f"Prompt {i % 3}", "completion": "word " * (1 + (7 * i) % 11)} for i in range(25)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    assert main(["score", "--model", str(tmp_path / "rm"), str(src), str(out), "--chunk-lines", "4", "--quiet"]) == 0
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [g["id"] for g in got] == list(range(25))
    want = m.score([r["prompt"] for r in rows], [r["completion"] for r in rows])
    assert [g["reward"] for g in got] == pytest.approx(want, abs=1e-5)


def test_bad_record_stops_with_line_and_field_and_writes_nothing(model_dirs, tmp_path, capsys):
    rows = [{"prompt": "p", "completion": "c"}] * 5 + [{"prompt": "p", "completion": 3}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    assert (
        main(["score", "--model", str(model_dirs["llama-chat"]), str(src), str(out), "--chunk-lines", "2", "--quiet"])
        == 2
    )
    assert "in.jsonl:6: field 'completion'" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".rankrm-tmp-*"))


def test_truncated_records_are_flagged_and_counted(model_dirs, tmp_path, capsys):
    """A 10,000-word completion is cut to the model's max length (the prompt's start and the completion's start go;
    the EOS stays): its record says so, and stderr counts it."""
    m = RewardModel.from_pretrained(str(model_dirs["llama-chat"]), max_length=32)
    m.save_pretrained(tmp_path / "rm")
    rows = [{"prompt": "p", "completion": "short"}, {"prompt": "p", "completion": "word " * 10_000}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    assert main(["score", "--model", str(tmp_path / "rm"), str(src), str(out), "--quiet"]) == 0
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert "truncated" not in got[0] and got[1]["truncated"] is True
    assert "1 of 2 records had their prompt cut" in capsys.readouterr().err


def test_a_nonfinite_reward_is_never_written(model_dirs, tmp_path, capsys):
    """A model whose config holds a NaN reward_bias (hand-edited) scores NaN: an error naming the line, no file."""
    m = RewardModel.from_pretrained(str(model_dirs["llama-chat"]))
    m.save_pretrained(tmp_path / "rm")
    cfg = json.loads((tmp_path / "rm" / "config.json").read_text())
    cfg["reward_bias"] = float("nan")
    (tmp_path / "rm" / "config.json").write_text(json.dumps(cfg))
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "p", "completion": "c"}])
    out = tmp_path / "out.jsonl"
    assert main(["score", "--model", str(tmp_path / "rm"), str(src), str(out), "--quiet"]) == 2
    assert "in.jsonl:1:" in capsys.readouterr().err and not out.exists()


def test_a_missing_output_directory_is_named(model_dirs, tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "p", "completion": "c"}])
    out = tmp_path / "no" / "such" / "out.jsonl"
    assert main(["score", "--model", str(model_dirs["llama-chat"]), str(src), str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {out}: its directory {out.parent} does not exist" in err and "Fix:" in err


def test_an_odin_model_adds_its_length_output_and_a_scalar_one_only_reward(model_dirs, tmp_path):
    from rankrm.modeling.heads import HeadSpec

    m = RewardModel.from_pretrained(str(model_dirs["llama-chat"]), head=HeadSpec.odin())
    m.save_pretrained(tmp_path / "odin")
    rows = [{"prompt": "p", "completion": "word " * n} for n in (1, 5, 9)]
    src, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    assert main(["score", "--model", str(tmp_path / "odin"), str(src), str(out), "--quiet"]) == 0
    got = [json.loads(x) for x in out.read_text().splitlines()]
    want = m.score_outputs([r["prompt"] for r in rows], [r["completion"] for r in rows])
    assert [set(g) for g in got] == [{"prompt", "completion", "reward", "length"}] * 3
    assert [g["length"] for g in got] == pytest.approx(want["length"], abs=1e-5)
    assert [g["reward"] for g in got] == pytest.approx(want["reward"], abs=1e-5)
    assert main(["score", "--model", str(model_dirs["llama-chat"]), str(src), str(out), "--quiet"]) == 0
    assert [set(json.loads(x)) for x in out.read_text().splitlines()] == [{"prompt", "completion", "reward"}] * 3
