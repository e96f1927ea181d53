"""The model card: a README.md in Hugging Face's convention (YAML front matter, then Markdown) that every saved
reward model directory carries, written inside the same directory swap as the model (RewardModel.save_pretrained).

It is what a user reads before trusting the model: the held-out figures of eval_results.json next to the length-only
baseline ("the longer completion wins"), how the model was trained (the saved TrainConfig) and how to load and
score it. It reads plain JSON only, so it sits below evaluation/ and training/ (which write that JSON)."""

from __future__ import annotations

import yaml

CARD_FILE = "README.md"


def _datasets(config: dict) -> list[str]:
    """The hub datasets a run read (hf:OWNER/NAME[:SPLIT] sources); local files are no hub datasets."""
    names = []
    for src in [*config.get("train_data", []), *config.get("eval_data", [])]:
        if isinstance(src, str) and src.startswith("hf:"):
            name = src[3:].split(":")[0]
            if name not in names:
                names.append(name)
    return names


def _metrics(after: dict) -> list[dict]:
    """The held-out figures as model-index metrics (only those present; no NaN reaches eval_results.json)."""
    length = after.get("length") or {}
    shorter = (length.get("by_preferred_length") or {}).get("shorter", {}).get("accuracy")
    rows = [
        ("accuracy", after.get("accuracy"), "Pairwise accuracy (held-out)"),
        ("loss", after.get("log_loss"), "Pairwise log loss (held-out)"),
        ("accuracy", length.get("longer_wins_tokens"), "Longer-wins baseline, tokens (no model)"),
        ("accuracy", length.get("longer_wins_chars"), "Longer-wins baseline, characters (no model)"),
        ("accuracy", shorter, "Accuracy where the preferred completion is the shorter"),
        ("spearmanr", (length.get("correlation") or {}).get("spearman"), "Spearman of reward with length"),
    ]
    return [{"type": t, "value": round(float(v), 4), "name": n} for t, v, n in rows if v is not None]


def front_matter(name: str, base_model: str | None, results: dict | None) -> dict:
    """The card's YAML header: base model, hub datasets, library, tags and (with results) the model-index."""
    config = (results or {}).get("config") or {}
    meta: dict = {}
    if base_model:
        meta["base_model"] = base_model
    datasets = _datasets(config)
    if datasets:
        meta["datasets"] = datasets
    meta.update({"library_name": "rankrm", "tags": ["reward-model", "rlhf"]})
    if results and results.get("after"):
        held = ", ".join(config.get("eval_data") or []) or "held-out prompts of the training data"
        task = {"type": "text-classification", "name": "Reward modeling (pairwise preference)"}
        dataset = {"type": "rankrm-heldout", "name": held}
        meta["model-index"] = [
            {"name": name, "results": [{"task": task, "dataset": dataset, "metrics": _metrics(results["after"])}]}
        ]
    return meta


def _f(x, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _figures(results: dict) -> list[str]:
    """The held-out figures as a Markdown table, the length baseline next to the model, and its warning."""
    after, before = results["after"], results.get("before") or {}
    length = after.get("length") or {}
    split = length.get("by_preferred_length") or {}
    corr = length.get("correlation") or {}
    ci = after.get("accuracy_ci95") or [None, None]
    rows = [
        (
            "pairwise accuracy [95% interval, bootstrap over prompts]",
            f"{_f(after['accuracy'])} [{_f(ci[0], 3)}, {_f(ci[1], 3)}]",
        ),
        ("pairwise log loss", _f(after.get("log_loss"))),
        ("accuracy before training", _f(before.get("accuracy"))),
        ('"the longer completion wins" (no model), by tokens', _f(length.get("longer_wins_tokens"))),
        ('"the longer completion wins" (no model), by characters', _f(length.get("longer_wins_chars"))),
    ]
    for key in ("longer", "shorter"):
        if key in split:
            v = split[key]
            rows.append(
                (f"accuracy where the preferred completion is the {key}", f"{_f(v['accuracy'])} ({v['pairs']} pairs)")
            )
    if corr:
        rows.append(("Spearman of reward with length, over completions", _f(corr.get("spearman"), 3)))
        rows.append(("Spearman of reward with length, mean per prompt", _f(corr.get("spearman_per_prompt"), 3)))
    lines = [
        f"On {after.get('groups')} held-out prompts ({after.get('pairs')} comparisons):",
        "",
        "| | |",
        "| --- | --- |",
        *[f"| {a} | {b} |" for a, b in rows],
        "",
    ]
    if length.get("warning"):
        lines += [f"**{length['warning']}**: this model may rank by length more than by quality.", ""]
    return lines


def _normalized(normalization: dict) -> list[str]:
    return [
        f"Normalized: rewards are offset by {normalization.get('offset', 0.0):+.4g} (gain "
        f"{normalization.get('gain', 1.0):.4g}) so that {normalization.get('count')} labeler demonstrations score a "
        "mean of 0 (InstructGPT); every way of loading the model applies it.",
        "",
    ]


def _training(results: dict) -> list[str]:
    config = yaml.safe_dump(results["config"], sort_keys=False, allow_unicode=True).rstrip("\n")
    return [
        "## Training",
        "",
        f"{results.get('steps')} optimizer steps on {results.get('train_groups')} groups (regime "
        f"{results.get('regime')}); the whole configuration (rankrm's TrainConfig):",
        "",
        "```yaml",
        config,
        "```",
        "",
    ]


USE = [
    "## Use",
    "",
    "```python",
    "from rankrm import RewardModel",
    "",
    'rm = RewardModel.from_pretrained("PATH")',
    'rewards = rm.score(["Which colour is the sky?"], ["Blue."])  # one float per (prompt, completion)',
    "```",
    "",
    "From the command line: `rankrm score --model PATH --data FILE`, `rankrm eval --model PATH --data FILE`, "
    "`rankrm serve --model PATH`. The directory is a plain Hugging Face `AutoModelForSequenceClassification` "
    "(one logit: the reward), read at the EOS token the saved chat template ends a completion with.",
    "",
]


def model_card(
    name: str, base_model: str | None, results: dict | None, normalization: dict | None, calibration: dict | None = None
) -> str:
    """The README.md of a saved reward model: front matter, held-out figures with the length baseline, how it was
    trained, how to load and score it."""
    header = yaml.safe_dump(front_matter(name, base_model, results), sort_keys=False, allow_unicode=True)
    source = f" from `{base_model}`" if base_model else ""
    lines = ["---", header.rstrip("\n"), "---", "", f"# {name}", ""]
    lines += [
        f"A reward model trained with rankrm{source}: a scalar head on the backbone's hidden state at the "
        "completion's last token (its EOS). r(prompt, completion) is a score, and sigmoid(r_a - r_b) the model's "
        "probability that completion a is preferred to b.",
        "",
        "## Held-out evaluation",
        "",
    ]
    if results and results.get("after"):
        lines += _figures(results)
    else:
        lines += ["Not evaluated here (no eval_results.json): run `rankrm eval --model PATH --data FILE`.", ""]
    if normalization:
        lines += _normalized(normalization)
    if calibration:
        lines += [
            f"Calibrated: every reward is divided by the temperature {calibration['temperature']:.4g} fitted on "
            f"{calibration['pairs']} held-out comparisons ({calibration.get('file', 'held-out data')}): expected "
            f"calibration error {calibration['ece_before']:.4f} before, {calibration['ece_after']:.4f} after. "
            "sigmoid(r_a - r_b) is the calibrated probability that a is preferred. The figures above were measured "
            "before.",
            "",
        ]
    if results and results.get("config"):
        lines += _training(results)
    return "\n".join(lines + USE)
