"""data/containers.py: JSON lists, gzip, Parquet, CSV, datasets directories and hub ids give the records of JSONL."""

import gzip
import json

import pytest
from conftest import OASST_FLAT, write_jsonl
from samples import CONVERSATIONAL, PAIRWISE, SKY, ULTRAFEEDBACK, hh_lines, read

from rankrm.data.readers import read_groups
from rankrm.errors import DataError


def test_json_list_and_gzip(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps(PAIRWISE, indent=2))
    with gzip.open(tmp_path / "p.json.gz", "wt") as f:
        json.dump(PAIRWISE, f)
    for name in ("p.json", "p.json.gz"):
        g, report = read(tmp_path / name)
        assert len(g) == 2 and report.records == 3 and g[0].stated_pairs == ((0, 1), (1, 2))


def test_json_list_errors_name_the_record(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps([PAIRWISE[0], {**PAIRWISE[1], "chosen": 5}]))
    with pytest.raises(DataError, match=r"p.json:record 2: field 'chosen': expected a string"):
        read_groups(tmp_path / "p.json")


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(CONVERSATIONAL), tmp_path / "c.parquet")
    g, _ = read(tmp_path / "c.parquet")
    assert g[0].prompt == SKY and g[1].completions == ("4", "5")
    pq.write_table(
        pa.Table.from_pylist(ULTRAFEEDBACK + [{**ULTRAFEEDBACK[0], "instruction": "Name a composite."}]),
        tmp_path / "u.parquet",
    )
    assert [x.ranks for x in read(tmp_path / "u.parquet")[0]] == [(0, 2, 0, 1)] * 2
    rows = [{"prompt": "x", "completions": ["a", "b"], "scores": [1.0, float("inf")]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet:record 1: field 'scores\[1\]': is inf"):
        read_groups(tmp_path / "bad.parquet")


def test_oasst_flat_export_as_parquet_written_by_pandas(tmp_path):
    """pandas stores the missing ranks of unranked messages as NaN: they read as null, and the groups are those of
    the JSONL lines."""
    import pandas as pd

    lines = OASST_FLAT.read_text(encoding="utf-8").splitlines()[:300]
    write_jsonl(tmp_path / "o.jsonl", lines)
    cols = ["message_id", "parent_id", "message_tree_id", "text", "role", "rank", "deleted", "synthetic", "lang"]
    df = pd.DataFrame([json.loads(x) for x in lines])[cols]
    assert df["rank"].isna().any()
    df.to_parquet(tmp_path / "o.parquet")
    a, b = read(tmp_path / "o.jsonl")[0], read(tmp_path / "o.parquet")[0]
    assert len(a) > 20 and [(x.prompt, x.completions, x.ranks) for x in a] == [
        (x.prompt, x.completions, x.ranks) for x in b
    ]


def test_csv_with_message_lists_as_json_cells(tmp_path):
    import csv

    with open(tmp_path / "p.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "chosen", "rejected", "margin"])
        w.writerow(["The sky is", " blue.", " green.", "1.5"])
        w.writerow([json.dumps(SKY), "It is blue,\nsaid she.", "It is green.", ""])  # a line break inside a cell
        w.writerow(["[INST] plain text [/INST]", "a", "b", ""])
    (a, b, c), _ = read(tmp_path / "p.csv")
    assert a.prompt == "The sky is" and a.margins == (1.5,)
    assert b.prompt == SKY and b.completions[0] == "It is blue,\nsaid she." and b.margins is None
    assert c.prompt == "[INST] plain text [/INST]"
    with open(tmp_path / "s.csv", "w", newline="") as f:
        csv.writer(f).writerows(
            [
                ["prompt", "completions", "scores"],
                ["Say hi", '["Hi!", "Go away."]', "[2, 1]"],
                ["Say bye", '["Bye", "Go away."', "[2, 1]"],
            ]
        )
    with pytest.raises(DataError, match=r"s.csv:3: field 'completions': malformed JSON in a CSV cell"):
        read_groups(tmp_path / "s.csv")


def test_datasets_directory_and_split_suffix(tmp_path):
    import datasets

    datasets.Dataset.from_list(PAIRWISE).save_to_disk(str(tmp_path / "ds"))
    g, report = read(tmp_path / "ds")
    assert len(g) == 2 and report.records == 3
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(PAIRWISE), "test": datasets.Dataset.from_list(PAIRWISE[:2])}
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    assert len(read_groups(f"{tmp_path / 'dd'}:test")) == 2
    with pytest.raises(DataError, match=r"has several splits \(train, test\)\. Fix: name one, as .*dd:SPLIT"):
        read_groups(tmp_path / "dd")


def test_hub_ids_go_through_load_dataset(monkeypatch):
    """Offline: the hub call is replaced, to check the name, data_dir and split it would be made with."""
    import datasets

    calls = []

    def fake(repo, data_dir=None, split=None):
        calls.append((repo, data_dir, split))
        return datasets.Dataset.from_list([json.loads(x) for x in hh_lines(1, 2, 3)])

    monkeypatch.setattr(datasets, "load_dataset", fake)
    g, _ = read("hf:Anthropic/hh-rlhf/harmless-base:test")
    assert calls[-1] == ("Anthropic/hh-rlhf", "harmless-base", "test") and len(g) == 3
    assert g[0].source == "hf:Anthropic/hh-rlhf/harmless-base:test:record 1"


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"nope.jsonl: does not exist"):
        read_groups(tmp_path / "nope.jsonl")


def test_non_utf8_bytes_in_csv_name_line_and_column(tmp_path):
    (tmp_path / "bad.csv").write_bytes(b"prompt,chosen,rejected\nhi,a,b\nhi,caf\xe9,b\n")
    with pytest.raises(DataError, match=r"bad.csv:3: field 'chosen': is not valid UTF-8"):
        read_groups(tmp_path / "bad.csv")
