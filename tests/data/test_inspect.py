"""`rankrm data inspect` and `rankrm data convert` on the shipped data, tokens, overlap, atomic writes, bad input."""

import json

from conftest import OASST_FLAT, OASST_TREES, SHIPPED, write_jsonl

from rankrm.cli import main
from rankrm.data.encode import TextEncoder, tokenize_groups
from rankrm.data.groups import ReadReport
from rankrm.data.inspect import describe_data
from rankrm.data.readers import read_groups
from rankrm.modeling.model import RewardModel

HH = SHIPPED / "hh_harmless_base_test.jsonl.gz"


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_inspect_hh_reports_every_record_and_the_split_prompts(capsys):
    """2,312 records and 2,312 comparisons; two prompts are asked twice, so 2,310 groups (two K=4 partial orders)."""
    code, out, _ = run(capsys, "data", "inspect", HH)
    assert code == 0
    assert f"data: {HH} (implicit)" in out
    assert "records: 2312  groups: 2310  comparisons: 2312 (2312 votes)  completions: 4624" in out
    assert "K histogram: K=2: 2308, K=4: 2" in out
    assert "partial orders: 2 groups state only some pairs" in out
    assert "skipped: none" in out
    assert "note: 4 empty assistant replies kept (the dialogue's last turn is empty)" in out
    assert "note: 5 dialogues that part before their last assistant turn (split where they part)" in out
    # every prompt is a conversation of whole turns ending with the user's; no speaker tag left in any text
    groups = read_groups(HH)
    assert all(g.prompt[0]["role"] == "user" and g.prompt[-1]["role"] == "user" for g in groups)
    assert not any("\n\nHuman:" in m["content"] or "\n\nAssistant:" in m["content"] for g in groups for m in g.prompt)
    # the 5 records whose dialogues part early: one reply of each goes on past an assistant turn of its own
    assert sum(1 for g in groups for c in g.completions if "\n\nAssistant:" in c) == 5


def test_inspect_oasst_files_match_sources_counts(capsys):
    """SOURCES.md: 212 groups in the tree file; 416 in the flat file, one of which ranks the same text twice."""
    code, out, _ = run(capsys, "data", "inspect", OASST_TREES, "--json")
    d = json.loads(out)
    assert code == 0 and d["format"] == {str(OASST_TREES): "oasst"} and d["records"] == 100
    assert d["groups"] == 212 and d["k_histogram"] == {"2": 57, "3": 117, "4": 27, "5": 3, "6": 6, "8": 1, "9": 1}
    assert d["notes"] == {"synthetic replies kept (humans ranked them with the others)": 17}
    code, out, _ = run(capsys, "data", "inspect", OASST_FLAT, "--against", OASST_TREES, "--json")
    d = json.loads(out)
    assert d["groups"] == 415 and d["k_histogram"] == {"2": 136, "3": 265, "4": 13, "5": 1}
    assert d["skipped"] == {"deleted messages": 25, "groups with duplicate replies": 1}
    assert d["against"]["identical_prompts"] == 15 and d["against"]["shared_conversations"] == 15


def test_inspect_counts_ties_duplicates_and_lengths(tmp_path):
    rows = [
        {"prompt": "Say hi", "completions": ["Hi!", "Hello there.", "Go away."], "ranks": [0, 0, 1]},
        {
            "prompt": [
                {"role": "user", "content": "abc"},
                {"role": "assistant", "content": "de"},
                {"role": "user", "content": "f"},
            ],
            "completions": ["Hi!", "no"],
            "ranks": [1, 0],
        },
    ]
    d = describe_data(write_jsonl(tmp_path / "n.jsonl", rows))
    assert d["groups"] == 2 and d["comparisons"] == 3 and d["tied_pairs"] == 1 and d["groups_with_ties"] == 1
    assert d["completions_in_several_groups"] == 1  # "Hi!"
    assert d["prompt_chars"] == {"min": 6, "median": 6.0, "mean": 6.0, "p95": 6.0, "max": 6}
    assert d["prompt_turns"]["max"] == 3 and d["completion_chars"]["max"] == 12


def test_inspect_tokens_use_the_models_length_policy(model_dirs, tmp_path, capsys):
    data = write_jsonl(tmp_path / "o.jsonl", OASST_TREES.read_text(encoding="utf-8").splitlines()[:10])
    d = describe_data(data, encoder=TextEncoder.from_pretrained(str(model_dirs["llama-chat"]), 64))
    groups = read_groups(data)
    _, truncated = tokenize_groups(RewardModel.from_pretrained(str(model_dirs["llama-chat"]), max_length=64), groups)
    t = d["tokens"]
    assert t["max_length"] == 64 and t["truncated_completions"] == truncated > 0 and t["dropped"] == 0
    assert t["sequence_tokens"]["max"] > 64 and 0 < t["completions_cut_into"] <= truncated
    code, out, _ = run(capsys, "data", "inspect", data, "--model", model_dirs["llama-chat"], "--max-length", 4096)
    assert code == 0 and "truncated: 0 completions in 0 groups" in out


def test_convert_to_pairwise_writes_one_record_per_stated_comparison(tmp_path, capsys):
    src = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "The sky is", "chosen": " blue.", "rejected": " green.", "margin": 2.0},
            {"prompt": "The sky is", "chosen": " green.", "rejected": " red.", "margin": 1.0},
        ],
    )
    out = tmp_path / "out.jsonl"
    code, text, _ = run(capsys, "data", "convert", src, out, "--to", "pairwise")
    assert code == 0 and "wrote 2 pairwise records" in text
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows == [
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green.", "margin": 2.0},
        {"prompt": "The sky is", "chosen": " green.", "rejected": " red.", "margin": 1.0},
    ]
    # oasst (messages, K up to 9) to TRL's conversational form and back: the same comparisons
    code, _, _ = run(capsys, "data", "convert", OASST_TREES, out, "--to", "pairwise")
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert code == 0 and len(rows) == 754 and rows[0]["chosen"][0]["role"] == "assistant"
    before, after = read_groups(OASST_TREES), read_groups(out)

    def pairs(gs):
        return {(json.dumps(g.prompt), g.completions[w], g.completions[l]) for g in gs for w, l in g.comparisons()}

    assert pairs(after) == pairs(before)


def test_convert_to_native_round_trips_partial_orders(tmp_path, capsys):
    out = tmp_path / "hh_native.jsonl.gz"
    code, text, _ = run(capsys, "data", "convert", HH, out, "--to", "native")
    assert code == 0 and "wrote 2310 native records" in text and "4 empty replies written" in text
    report = ReadReport()
    back = read_groups(out, report=report, skip_invalid=True)  # the 4 empty HH replies are refused in native data
    assert len(back) == 2306 and report.skipped == {"invalid: empty completion": 4}
    assert sum(1 for g in back if g.stated_pairs == ((0, 1), (2, 3))) == 2


def test_bad_data_exits_2_naming_line_and_field_and_writes_nothing(tmp_path, capsys):
    src = write_jsonl(
        tmp_path / "bad.jsonl",
        [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a", "rejected": 5}],
    )
    out = tmp_path / "out.jsonl"
    code, _, err = run(capsys, "data", "convert", src, out, "--to", "native")
    assert code == 2 and "bad.jsonl:2: field 'rejected': expected a string" in err and "Fix:" in err
    assert not out.exists() and list(tmp_path.iterdir()) == [src]
    code, _, err = run(capsys, "data", "inspect", src)
    assert code == 2 and "bad.jsonl:2: field 'rejected'" in err
    code, text, _ = run(capsys, "data", "convert", src, out, "--to", "native", "--skip-invalid")
    assert code == 0 and "skipped 1 (invalid: rejected: not text or messages)" in text and out.exists()


def test_eval_and_train_take_skip_invalid(model_dirs, tmp_path, capsys):
    rows = [{"prompt": f"Say {i}", "completions": [f"{i}", "no"], "ranks": [0, 1]} for i in range(8)]
    src = write_jsonl(tmp_path / "d.jsonl", rows + [{"prompt": "x", "completions": ["a"]}])
    model = model_dirs["llama-chat"]
    code, _, err = run(capsys, "eval", "--model", model, "--data", src, "--json")
    assert code == 2 and "d.jsonl:9: field 'completions'" in err
    code, out, _ = run(capsys, "eval", "--model", model, "--data", src, "--json", "--skip-invalid")
    m = json.loads(out)
    assert code == 0 and m["groups"] == 8 and "skipped 1 (invalid: K < 2)" in m["read"]
    code, _, err = run(
        capsys,
        "train",
        "--model",
        model,
        "--train-data",
        src,
        "--output-dir",
        tmp_path / "run",
        "--max-steps",
        1,
        "--max-length",
        32,
        "--skip-invalid",
    )
    assert code == 0 and json.loads((tmp_path / "run" / "eval_results.json").read_text())["config"]["skip_invalid"]
