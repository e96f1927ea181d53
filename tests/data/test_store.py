"""The prepared data store: fingerprints, tokens equal to the model's, damage found and prepared again, and training
from a store bit-identical to training from the files (preparing it: test_prepare.py)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import OASST_TREES, synthetic_groups, write_jsonl
from samples import HH, _encoder, _pairwise_far_apart

from rankrm.data.encode import TextEncoder, tokenize_groups
from rankrm.data.prepare import open_data, prepare
from rankrm.data.readers import read_groups
from rankrm.data.store import Store, fingerprint
from rankrm.errors import DataError
from rankrm.modeling.model import RewardModel


def test_store_tokens_are_the_models_and_the_report_is_kept(tmp_path, model_dirs):
    model = RewardModel.from_pretrained(str(model_dirs["llama-chat"]), max_length=96)
    for src in ([HH], [OASST_TREES], [_pairwise_far_apart(tmp_path / "p.jsonl")]):
        store = prepare(src, model.encoder, tmp_path / "store", num_proc=2)
        from rankrm.data.groups import ReadReport

        report = ReadReport()
        groups = read_groups(src, report=report)
        tok, cut = tokenize_groups(model, groups)
        view = store.view()
        assert len(view) == len(tok) and [view[i] for i in range(len(view))] == tok
        assert store.report.summary() == report.summary()
        assert int(view.column("cut").sum()) == cut
        assert list(view.lengths) == [g.tokens for g in tok]
        assert [json.loads(r)["prompt"] for r in view.records()] == [g.prompt for g in groups]


def test_fingerprint_changes_with_what_matters_only(tmp_path, model_dirs):
    data = write_jsonl(tmp_path / "a.jsonl", synthetic_groups(20, seed=1))
    enc = _encoder(model_dirs)
    base, _ = fingerprint([data], "auto", "keep", False, enc)
    copy = tmp_path / "elsewhere" / "b.jsonl"
    copy.parent.mkdir()
    shutil.copy(data, copy)
    os.utime(copy, (1, 1))
    assert fingerprint([copy], "auto", "keep", False, enc)[0] == base  # same bytes, another name and time
    assert fingerprint([data], "auto", "keep", False, _encoder(model_dirs))[0] == base  # loaded again
    changed = tmp_path / "c.jsonl"
    changed.write_bytes(data.read_bytes().replace(b"please", b"Please", 1))
    other_template = _encoder(model_dirs)
    other_template.tokenizer.chat_template = other_template.tokenizer.chat_template.replace("\n", " \n", 1)
    variants = {
        "file bytes": fingerprint([changed], "auto", "keep", False, enc),
        "format": fingerprint([data], "native", "keep", False, enc),
        "conflicts": fingerprint([data], "auto", "drop", False, enc),
        "skip-invalid": fingerprint([data], "auto", "keep", True, enc),
        "max length": fingerprint([data], "auto", "keep", False, _encoder(model_dirs, max_length=64)),
        "tokenizer": fingerprint([data], "auto", "keep", False, _encoder(model_dirs, "llama-plain")),
        "chat template": fingerprint([data], "auto", "keep", False, other_template),
        "another file too": fingerprint([data, changed], "auto", "keep", False, enc),
    }
    for what, (fp, _) in variants.items():
        assert fp != base, what
    assert len({fp for fp, _ in variants.values()}) == len(variants)


def test_damaged_store_is_not_trusted_and_is_prepared_again(tmp_path, model_dirs, caplog):
    data = write_jsonl(tmp_path / "a.jsonl", synthetic_groups(20, seed=1))
    enc = _encoder(model_dirs)
    store = open_data([data], enc, tmp_path / "cache")
    tokens = store.path / store.manifest["token_files"][0]
    with open(tokens, "r+b") as f:
        f.truncate(tokens.stat().st_size // 2)
    with pytest.raises(DataError, match="not a usable prepared store"):
        Store(store.path)
    caplog.set_level(logging.INFO, logger="rankrm")
    again = open_data([data], enc, tmp_path / "cache")
    assert any("preparing it again" in s for s in caplog.messages)
    assert len(again.view()) == 20


def test_training_from_a_store_is_bit_identical_to_training_from_the_file(tmp_path, model_dirs):
    data = write_jsonl(tmp_path / "train.jsonl", synthetic_groups(40, seed=3))
    base = [
        "--model",
        str(model_dirs["llama-chat"]),
        "--max-length",
        "64",
        "--max-steps",
        "4",
        "--batch-size",
        "4",
        "--train-layers",
        "1",
        "--learning-rate",
        "1e-3",
        "--no-plots",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "RANKRM_DATA_CACHE": str(tmp_path / "cache"),
    }

    def run(*a):
        return subprocess.run(
            [sys.executable, "-m", "rankrm", *a], env=env, capture_output=True, text=True, timeout=600
        )

    r = run("train", "--train-data", str(data), "--output-dir", str(tmp_path / "from-file"), *base)
    assert r.returncode == 0, r.stderr
    assert "preparing" in r.stdout + r.stderr
    p = run(
        "data",
        "prepare",
        str(data),
        "--model",
        str(model_dirs["llama-chat"]),
        "--max-length",
        "64",
        "--out",
        str(tmp_path / "store"),
    )
    assert p.returncode == 0, p.stderr
    r = run("train", "--train-data", str(tmp_path / "store"), "--output-dir", str(tmp_path / "from-store"), *base)
    assert r.returncode == 0, r.stderr
    a = (tmp_path / "from-file" / "model.safetensors").read_bytes()
    b = (tmp_path / "from-store" / "model.safetensors").read_bytes()
    assert a == b
    assert (tmp_path / "from-file" / "heldout.jsonl").read_text() == (
        tmp_path / "from-store" / "heldout.jsonl"
    ).read_text()
    # a store made for another max length is refused with the fix, exit 2
    r = run(
        "train",
        "--train-data",
        str(tmp_path / "store"),
        "--output-dir",
        str(tmp_path / "bad"),
        *[x if x != "64" else "48" for x in base],
    )
    assert r.returncode == 2 and "prepare it again" in r.stderr and "Traceback" not in r.stderr
    r = run("eval", "--model", str(tmp_path / "from-store"), "--data", str(tmp_path / "store"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pairs"] > 0


def _flip_a_byte(path: Path, keep_mtime: bool = False) -> None:
    """One byte in the middle of a file inverted: same size (bit rot keeps the mtime too)."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(st.st_size // 2)
        b = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([b[0] ^ 0xFF]))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size


def test_store_with_one_byte_flipped_is_not_used_and_the_run_prepares_it_again(tmp_path, model_dirs, caplog):
    """A flipped byte of a token file (same size) is found by its SHA-256: the cached store is prepared again,
    with a warning naming the file, and the run trains; the store given by path is refused, naming the file."""
    from rankrm.training.config import TrainConfig
    from rankrm.training.run import train

    data = write_jsonl(tmp_path / "a.jsonl", synthetic_groups(20, seed=1))
    enc = _encoder(model_dirs, max_length=512)
    cache = tmp_path / "cache"
    store = open_data([data], enc, cache)
    before = [store.view()[i].ids for i in range(20)]
    tokens = store.path / store.manifest["token_files"][0]
    assert store.manifest["files"][tokens.name]["sha256"]
    _flip_a_byte(tokens)
    with pytest.raises(DataError, match=f"{tokens.name} has changed since it was prepared"):
        open_data([store.path], enc, cache)
    cfg = TrainConfig(
        model=str(model_dirs["llama-chat"]),
        train_data=[str(data)],
        output_dir=str(tmp_path / "run"),
        data_cache=str(cache),
        max_steps=1,
        batch_size=4,
        plots=False,
    )
    caplog.set_level(logging.INFO, logger="rankrm")
    results = train(cfg)
    said = "\n".join(caplog.messages)
    assert f"{tokens.name} has changed since it was prepared" in said and "preparing it again" in said
    assert results["steps"] == 1
    again = Store(store.path)
    assert [again.view()[i].ids for i in range(20)] == before


def test_bit_rot_with_the_mtime_kept_is_found_by_a_new_process(tmp_path, model_dirs):
    """The full hash runs when a process first opens a store: a flip that keeps size and mtime is refused by the
    next process, with the file named and the fix."""
    data = write_jsonl(tmp_path / "a.jsonl", synthetic_groups(10, seed=2))
    store = open_data([data], _encoder(model_dirs), tmp_path / "cache")
    groups = store.path / "groups.arrow"
    _flip_a_byte(groups, keep_mtime=True)
    code = "import sys\nfrom rankrm.data.store import Store\nfrom rankrm.errors import DataError\n"
    code += f"try:\n    Store({str(store.path)!r})\nexcept DataError as e:\n    sys.exit(str(e))\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "groups.arrow has changed since it was prepared" in proc.stderr and "prepare it again" in proc.stderr


def test_token_ids_outside_the_vocabulary_are_refused_naming_the_store(tmp_path, model_dirs):
    data = write_jsonl(tmp_path / "a.jsonl", synthetic_groups(10, seed=3))
    enc = _encoder(model_dirs)
    store = open_data([data], enc, tmp_path / "cache")
    assert 300 <= store.manifest["max_token_id"] < len(enc.tokenizer)
    from conftest import build_tokenizer

    build_tokenizer(tmp_path / "small", True, False, vocab_size=300)  # ids 300..402 of the store are not its
    small = TextEncoder.from_pretrained(str(tmp_path / "small"), 128)
    with pytest.raises(DataError, match="outside the vocabulary") as e:
        open_data([store.path], small, tmp_path / "cache")
    assert str(store.path) in str(e.value)
