"""Small real-shaped records of every format, shared by the readers' tests, and a read() that keeps the report."""

import gzip
from pathlib import Path

from conftest import SHIPPED, write_jsonl

from rankrm.data.encode import TextEncoder
from rankrm.data.groups import ReadReport
from rankrm.data.readers import read_groups

HH = SHIPPED / "hh_harmless_base_test.jsonl.gz"
SKY = [{"role": "user", "content": "What color is the sky?"}]

# TRL's standard pairwise form (strings), with margins; two records share a prompt
PAIRWISE = [
    {"prompt": "The sky is", "chosen": " blue.", "rejected": " green.", "margin": 2.0},
    {"prompt": "The sun is", "chosen": " a star.", "rejected": " a planet.", "margin": 1.0},
    {"prompt": "The sky is", "chosen": " green.", "rejected": " made of cheese.", "margin": 0.5},
]
# TRL's conversational pairwise form
CONVERSATIONAL = [
    {
        "prompt": SKY,
        "chosen": [{"role": "assistant", "content": "It is blue."}],
        "rejected": [{"role": "assistant", "content": "It is green."}],
    },
    {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}],
    },
]
# TRL's implicit-prompt conversational form: whole conversations sharing their prompt
IMPLICIT_MESSAGES = [
    {
        "chosen": SKY + [{"role": "assistant", "content": "It is blue."}],
        "rejected": SKY + [{"role": "assistant", "content": "It is green."}],
    },
]
ANN = {"helpfulness": {"Rating": "4", "Rationale": "..."}}
# UltraFeedback's raw shape (trimmed): completions as objects with fine-grained and overall scores
ULTRAFEEDBACK = [
    {
        "source": "evol_instruct",
        "instruction": "Name a prime number.",
        "models": ["a", "b", "c", "d"],
        "completions": [
            {"model": "a", "response": "7", "fine-grained_score": 4.75, "overall_score": 8.0, "annotations": ANN},
            {"model": "b", "response": "9", "fine-grained_score": 1.25, "overall_score": 6.0, "annotations": ANN},
            {"model": "c", "response": "Seven.", "fine-grained_score": 4.75, "overall_score": 7.5, "annotations": ANN},
            {
                "model": "d",
                "response": "Two is prime.",
                "fine-grained_score": 4.5,
                "overall_score": 9.0,
                "annotations": ANN,
            },
        ],
    },
]
# HuggingFaceH4/ultrafeedback_binarized's shape: a string prompt; chosen and rejected repeat it as a user turn
UF_BINARIZED = [
    {
        "prompt": "Name a prime number.",
        "prompt_id": "0f3c",
        "score_chosen": 9.0,
        "score_rejected": 2.0,
        "chosen": [{"role": "user", "content": "Name a prime number."}, {"role": "assistant", "content": "7"}],
        "rejected": [{"role": "user", "content": "Name a prime number."}, {"role": "assistant", "content": "9"}],
        "messages": [{"role": "user", "content": "Name a prime number."}, {"role": "assistant", "content": "7"}],
    },
]
SCORED = [
    {"prompt": "Say hi", "completions": ["Hi!", "Hello there.", "Go away."], "scores": [7, 9, 2]},
    {"prompt": SKY, "completions": ["Blue.", "Green."], "ratings": [0.9, 0.1]},
]


def hh_lines(*numbers) -> list[str]:
    with gzip.open(HH, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    return [lines[n - 1] for n in numbers]


def read(path, fmt="auto", skip_invalid=False, conflicts="keep"):
    report = ReadReport()
    return read_groups(path, fmt, report, skip_invalid, conflicts), report


def _pairwise_far_apart(path: Path) -> Path:
    """Pairwise records whose prompts repeat far apart (merged late), with a repeat and a contradiction."""
    rows = []
    for i in range(30):
        rows.append({"prompt": f"question {i % 10}", "chosen": f"good answer {i}", "rejected": f"bad answer {i}"})
    rows.append({"prompt": "question 3", "chosen": "good answer 3", "rejected": "bad answer 3"})  # a repeat
    rows.append({"prompt": "question 4", "chosen": "bad answer 4", "rejected": "good answer 4"})  # disagrees
    return write_jsonl(path, rows)


def _encoder(model_dirs, kind="llama-chat", max_length=128):
    return TextEncoder.from_pretrained(str(model_dirs[kind]), max_length)
