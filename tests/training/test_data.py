"""training/data.py: what the training data holds against the objective and the tokenizer, said or refused before training."""

import logging

import pytest
from conftest import write_jsonl

from rankrm.errors import DataError
from rankrm.training.config import TrainConfig
from rankrm.training.run import train


def _word_model(out):
    """A Llama backbone whose tokenizer knows a few words only: every other word is <unk>."""
    from conftest import build_model_dir
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<|im_end|>", "<unk>", "<pad>", "hello", "good", "bad"]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", unk_token="<unk>", pad_token="<pad>")
    return build_model_dir(out, "llama", tok)


def test_identical_completions_are_named_by_their_cause(tmp_path, caplog):
    """With max length 8, worked by hand (hello, good, bad known; E the EOS):
    - "hello " + "red fish" / "blue bird": [hello unk unk E] both, 4 tokens, nothing cut: the tokenizer's doing;
    - "hello " + "good" / "bad" + 9 x: [hello good unk x 9 E], 12 tokens, cut to the last 8, [unk x 7 E] both: the
      cut's doing;
    - "hello " + "good" / "bad": [hello good E], [hello bad E]: told apart."""
    from rankrm.data.prepare import prepare
    from rankrm.modeling.model import TextEncoder
    from rankrm.training.data import identical_completions

    model = _word_model(tmp_path / "m")
    rows = [
        {"prompt": "hello ", "completions": ["red fish", "blue bird"], "ranks": [0, 1]},
        {"prompt": "hello ", "completions": ["good" + " x" * 9, "bad" + " x" * 9], "ranks": [0, 1]},
        {"prompt": "hello ", "completions": ["good", "bad"], "ranks": [0, 1]},
    ]
    data, held = write_jsonl(tmp_path / "t.jsonl", rows), write_jsonl(tmp_path / "h.jsonl", rows[2:])
    store = prepare([data], TextEncoder.from_pretrained(str(model), 8), tmp_path / "store")
    assert identical_completions(store.view(), 8) == (1, 1)
    caplog.set_level(logging.INFO, logger="rankrm")
    kw = dict(model=str(model), eval_data=[str(held)], max_steps=1, data_cache=str(tmp_path / "cache"), plots=False)
    train(TrainConfig(train_data=[str(data)], output_dir=str(tmp_path / "run"), max_length=8, **kw))
    warned = [m for m in caplog.messages if m.startswith("warning:") and "completions" in m]
    assert warned == [
        "warning: 1 groups have completions identical after tokenization: the tokenizer maps different completions "
        "to the same ids (nothing was cut)",
        "warning: 1 groups have completions made identical by --max-length 8",
    ]
    only = write_jsonl(tmp_path / "o.jsonl", rows[:1])
    with pytest.raises(ValueError, match="the tokenizer maps different completions to the same ids .* every group"):
        train(
            TrainConfig(
                **{**kw, "train_data": [str(only)], "eval_data": [str(only)], "output_dir": str(tmp_path / "o")}
            )
        )


def test_plackett_luce_refuses_groups_that_state_no_ranking_and_says_how_many(model_dirs, tmp_path, caplog):
    """3 groups: a plain ranking, a partial order (0 > 1, 1 > 2, nothing on 0 vs 2) and a pair stated 3 times:
    2 of 3 state no whole ranking, 1 by votes, 1 by stating only some pairs. The pairwise objective takes them,
    and says that the partial order's margins go unused without --margin-scale."""
    from rankrm.data.encode import TextEncoder
    from rankrm.data.prepare import prepare
    from rankrm.training.data import check_objective

    rows = [
        {"prompt": "p", "completions": ["a", "b"], "ranks": [0, 1]},
        {"prompt": "q", "completions": ["a", "b", "c"], "pairs": [[0, 1], [1, 2]], "margins": [1.0, 2.0]},
        {"prompt": "r", "completions": ["a", "b"], "pairs": [[0, 1]], "counts": [3]},
    ]
    data = write_jsonl(tmp_path / "t.jsonl", rows)
    view = prepare([data], TextEncoder.from_pretrained(str(model_dirs["llama-chat"]), 64), tmp_path / "s").view()
    pl = TrainConfig(train_data=[str(data)], objective="plackett-luce")
    with pytest.raises(DataError) as e:
        check_objective(pl, view)
    assert str(e.value).startswith(
        f"{data}: has 2 of 3 training groups whose stated comparisons are not a ranking (1 with votes that repeat or "
        "disagree, 1 stating only some pairs, as merged pairwise records do)"
    )
    assert str(e.value).endswith(
        "Fix: train them with --objective pairwise (every vote and partial order counts there), or pass "
        "--conflicts drop (a repeated vote counted once)"
    )
    caplog.set_level(logging.INFO, logger="rankrm")
    check_objective(TrainConfig(train_data=[str(data)]), view)
    assert "note: 1 training groups give margins, unused (pass --margin-scale 1 to use them)" in caplog.messages
