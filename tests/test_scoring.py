"""`rankrm score`: streamed scoring of JSONL files, in input order, nothing written on bad input."""

import json

import pytest

from rankrm.cli import main
from rankrm.model import RewardModel
from conftest import write_jsonl


def test_score_file_keeps_order_and_fields_across_chunks(model_dirs, tmp_path):
    m = RewardModel.from_pretrained(str(model_dirs["llama-chat"]))
    m.save_pretrained(tmp_path / "rm")  # a saved reward model: its head is fixed, unlike a fresh one's
    rows = [{"id": i, "prompt": f"Prompt {i % 3}", "completion": "word " * (1 + (7 * i) % 11)} for i in range(25)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    assert main(["score", "--model", str(tmp_path / "rm"), str(src), str(out), "--chunk-lines", "4",
                 "--quiet"]) == 0
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [g["id"] for g in got] == list(range(25))
    want = m.score([r["prompt"] for r in rows], [r["completion"] for r in rows])
    assert [g["reward"] for g in got] == pytest.approx(want, abs=1e-5)


def test_bad_record_stops_with_line_and_field_and_writes_nothing(model_dirs, tmp_path, capsys):
    rows = [{"prompt": "p", "completion": "c"}] * 5 + [{"prompt": "p", "completion": 3}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    assert main(["score", "--model", str(model_dirs["llama-chat"]), str(src), str(out), "--chunk-lines", "2",
                 "--quiet"]) == 2
    assert "in.jsonl:6: field 'completion'" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl*"))
