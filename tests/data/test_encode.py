"""data/encode.py: text to token ids once per prompt, shared prefixes, rating columns, pairs of votes."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import OASST_TREES, SHIPPED
from samples import HH

from rankrm.data.encode import (
    TextEncoder,
    TokenizedGroup,
    attribute_columns,
    shared_prefix_length,
    shuffled_pairs,
    tokenize_processes,
)
from rankrm.data.readers import read_groups


def test_prompts_tokenized_once_give_the_tokens_of_the_whole_text(tokenizers_dir, tmp_path):
    """TextEncoder.tokenize cuts each rendered prompt before its last special token and tokenizes that head once
    for all its completions: the tokens must be those of tokenizing each whole text, on all the shipped data, for
    tokenizers with and without a chat template, with a pad token added, and one whose special token takes the
    space before it (lstrip), where no cut may be made."""
    from tokenizers import AddedToken

    groups = [g for src in (HH, OASST_TREES, SHIPPED / "oasst1_en_validation.jsonl") for g in read_groups([src])]
    prompts = [g.prompt for g in groups for _ in g.completions]
    completions = [c for g in groups for c in g.completions]
    encoders = {k: TextEncoder(_fresh(t, tmp_path / k), 10**6) for k, t in tokenizers_dir.items()}
    odd = _fresh(tokenizers_dir["chat"], tmp_path / "odd")
    odd.add_special_tokens({"additional_special_tokens": [AddedToken("<|im_start|>", lstrip=True, special=True)]})
    encoders["lstrip"] = TextEncoder(odd, 10**6)
    for kind, enc in encoders.items():
        whole = enc.tokenizer([enc.render(p, c) for p, c in zip(prompts, completions)], add_special_tokens=False)[
            "input_ids"
        ]
        ids, _ = enc.tokenize(prompts, completions)
        assert ids == whole, kind
    assert encoders["chat"].split_prompt(encoders["chat"].render_prompt([{"role": "user", "content": "hi"}]))[0]
    assert encoders["lstrip"].split_prompt("a <|im_start|>b") == ("", "a <|im_start|>b")


def _fresh(tok, path: Path):
    """A copy of a tokenizer, loaded from disk (TextEncoder changes the one it gets)."""
    from transformers import AutoTokenizer

    tok.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def test_the_shared_prefix_leaves_every_row_its_last_token():
    """[1 2 3 4] and [1 2 3 5 6] share 1 2 3; [1 2 3] and [1 2 3 4] share all of the shorter row, but the prefix
    stops one short of it (2) so the reward still reads a token of its own; rows that differ at once share 0."""
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2
    assert shared_prefix_length([[9, 2, 3], [1, 2, 3]]) == 0
    assert shared_prefix_length([list(range(100)), list(range(57)) + [0] * 43, list(range(100))]) == 57
    assert shared_prefix_length([[5], [5, 6]]) == 0


def test_ratings_become_sorted_columns_with_none_where_not_given():
    ratings = ({"helpful": 4.0}, None, {"honest": 1.0, "helpful": 2.0})
    assert attribute_columns(ratings) == {"helpful": [4.0, None, 2.0], "honest": [None, None, 1.0]}
    assert attribute_columns(({}, {})) == {}


def test_each_vote_becomes_a_pair_of_its_own_with_its_margin():
    """Ranks (0, 1, 1) state 0 > 1 and 0 > 2, the second twice (counts): 3 pairs, winner first."""
    g = TokenizedGroup([[1, 7], [1, 8], [1, 9]], [0, 1, 1], [(0, 1), (0, 2)], [1, 2], margins=[0.5, 1.5])
    pairs = shuffled_pairs([g])
    assert [(p.ids, p.ranks, p.margins) for p in pairs] == [
        ([[1, 7], [1, 8]], [0, 1], [0.5]),
        ([[1, 7], [1, 9]], [0, 1], [1.5]),
        ([[1, 7], [1, 9]], [0, 1], [1.5]),
    ]


def test_the_tokenizing_processes_are_those_asked_else_one_a_core_up_to_8():
    assert tokenize_processes(3) == 3
    assert tokenize_processes() == max(1, min(8, os.cpu_count() or 1))
