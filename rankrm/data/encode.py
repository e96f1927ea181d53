"""Text to token ids: the one place a (prompt, completion) becomes the tokens a reward model reads.

A TextEncoder is the tokenizer, its chat template and the max length, without the model's weights: training,
evaluation, scoring and serving tokenize through the RewardModel's encoder, and `rankrm data prepare` through one
loaded on its own (store.py), so a prepared store holds exactly the tokens the model would make."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass

from rankrm.data.groups import comparisons, votes
from rankrm.errors import DataError, ModelError

PAD_TOKEN = "<|rankrm_pad|>"  # added when a tokenizer has no pad token or pads with EOS

_PROBE = [{"role": "user", "content": "Which colour is the sky?"}]


def tokenize_processes(asked: int = 0) -> int:
    """The processes that tokenize when data is prepared: `asked`, or (0) one per CPU core, up to 8."""
    return asked or max(1, min(8, os.cpu_count() or 1))


def add_pad_token(tokenizer) -> bool:
    """Give the tokenizer a pad token distinct from EOS (so that Hugging Face's pooling, the last non-pad token,
    reads EOS); returns whether one was added (the model's embeddings then need a row for it)."""
    if tokenizer.eos_token_id is None:
        raise ModelError(
            "the tokenizer has no EOS token; the reward is read at the completion's EOS. "
            "Fix: set tokenizer.eos_token before building the RewardModel."
        )
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        return True
    return False


class TextEncoder:
    """Renders (prompt, completion) pairs and tokenizes them, cut from the left to max_length."""

    def __init__(self, tokenizer, max_length: int = 1024):
        add_pad_token(tokenizer)
        self.tokenizer = tokenizer
        self.max_length = max_length
        probe = tokenizer("a").input_ids
        self.adds_bos = tokenizer.bos_token_id is not None and len(probe) > 0 and probe[0] == tokenizer.bos_token_id
        if tokenizer.chat_template:
            tokenizer.chat_template = end_at_eos(self, tokenizer.chat_template)
        self._split_at = _special_token_pattern(tokenizer)

    def __getstate__(self):  # the compiled pattern is rebuilt, not pickled (datasets.map sends encoders to workers)
        return {k: v for k, v in self.__dict__.items() if k != "_split_at"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._split_at = _special_token_pattern(self.tokenizer)

    def split_prompt(self, text: str) -> tuple[str, str]:
        """A rendered prompt as (head, tail), cut where its last special token starts (("", text) when it has none
        or the tokenizer cannot be cut): a fast tokenizer splits its input at special tokens before anything else
        and tokenizes the pieces apart, so tokens(head) + tokens(tail + completion) == tokens(whole text), and the
        head, most of a long prompt, is tokenized once for all its completions (tests/data/test_store.py checks the
        equality on the shipped data)."""
        if self._split_at is None:
            return "", text
        last = None
        for last in self._split_at.finditer(text):
            pass
        return ("", text) if last is None else (text[: last.start()], text[last.start() :])

    @classmethod
    def from_pretrained(cls, path: str, max_length: int | None = None) -> TextEncoder:
        """The encoder of a local model directory (a backbone or a saved reward model), without its weights."""
        from pathlib import Path

        from transformers import AutoTokenizer

        meta = Path(path) / "rankrm.json"
        try:
            saved = json.loads(meta.read_text()).get("max_length") if meta.is_file() else None
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as e:  # the user's directory: no tokenizer files, damaged JSON, ...
            raise ModelError(
                f"{path}: the tokenizer does not load ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
                "Fix: pass --model with a model directory that holds its tokenizer (tokenizer.json or the files "
                "of its tokenizer class)"
            ) from e
        return cls(tokenizer, max_length or saved or 1024)

    def render_prompt(self, prompt) -> str:
        """The prompt as text: a string verbatim; messages through the chat template, else 'Role: text' blocks."""
        if isinstance(prompt, str):
            text = prompt
        elif self.tokenizer.chat_template:
            from jinja2 import TemplateError

            try:
                text = self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            except TemplateError as e:  # the template refuses these messages (raise_exception): bad input
                raise DataError(
                    f"the prompt {json.dumps(prompt, ensure_ascii=False)[:80]}",
                    None,
                    None,
                    f"the model's chat template refuses it ({type(e).__name__}: {e})",
                    "check the messages' roles and order against the model's chat template",
                    reason="the chat template refuses the prompt",
                ) from None
        else:  # documented fallback for tokenizers without a chat template
            text = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in prompt) + "Assistant: "
        bos = self.tokenizer.bos_token
        if self.adds_bos and not text.startswith(bos):
            text = bos + text
        return text

    def render(self, prompt, completion: str) -> str:
        """Exactly the text the backbone reads for (prompt, completion), ending with the EOS token."""
        return self.render_prompt(prompt) + completion + self.tokenizer.eos_token

    def tokenize(self, prompts, completions) -> tuple[list[list[int]], list[bool]]:
        """Token ids of each rendered pair, cut from the left to max_length; returns (ids, which were cut).

        Batched through the (fast) tokenizer. The one place text becomes tokens: training, evaluation, scoring and
        serving all come through here."""
        prompts = list(prompts)  # held, so that no id below is reused
        heads: dict[
            int, int
        ] = {}  # prompt object -> its head's index: each prompt rendered and its head tokenized once
        head_texts, which, texts = [], [], []
        eos = self.tokenizer.eos_token
        for p, c in zip(prompts, completions, strict=True):
            if id(p) not in heads:
                head, tail = self.split_prompt(self.render_prompt(p))
                heads[id(p)] = len(head_texts)
                head_texts.append((head, tail))
            h = heads[id(p)]
            which.append(h)
            texts.append(head_texts[h][1] + c + eos)
        tok = functools.partial(self.tokenizer, add_special_tokens=False)
        head_ids = tok([h for h, _ in head_texts])["input_ids"] if any(h for h, _ in head_texts) else None
        ids = tok(texts)["input_ids"]
        if head_ids is not None:
            ids = [head_ids[h] + row for h, row in zip(which, ids)]
        eos = self.tokenizer.eos_token_id
        cut = [False] * len(ids)
        for i, row in enumerate(ids):
            if not row or row[-1] != eos:
                raise ModelError(
                    f"rendered text does not end with the EOS token id {eos}: {texts[i][-80:]!r}. "
                    "Fix: use a tokenizer that parses its EOS token as a special token."
                )
            if len(row) > self.max_length:  # keep the end: the prompt is cut from the left, never the EOS
                ids[i], cut[i] = row[-self.max_length :], True
        return ids, cut

    def fingerprint(self) -> str:
        """A digest of everything that decides the tokens: the tokenizer's whole definition (vocabulary, merges,
        normalizer, added tokens), its special tokens, the chat template and the max length."""
        tok = self.tokenizer
        backend = getattr(tok, "backend_tokenizer", None)
        definition = backend.to_str() if backend is not None else json.dumps(sorted(tok.get_vocab().items()))
        h = hashlib.sha256(definition.encode())
        h.update(
            json.dumps(
                {
                    "class": type(tok).__name__,
                    "special": tok.special_tokens_map,
                    "adds_bos": self.adds_bos,
                    "added": sorted(tok.get_added_vocab().items()),
                    "template": tok.chat_template,
                    "max_length": self.max_length,
                },
                sort_keys=True,
                default=str,
            ).encode()
        )
        return h.hexdigest()


def _special_token_pattern(tokenizer):
    """A regex of the tokenizer's special tokens where a text may be cut without changing its tokens, or None.

    Only for fast tokenizers (which split at added tokens before normalizing and pre-tokenizing), and only special
    tokens matched on the raw text that take no whitespace from before them (lstrip) and need no word boundary."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    tokens = [
        t.content
        for t in tokenizer.added_tokens_decoder.values()
        if t.special and not t.normalized and not t.lstrip and not t.single_word and t.content
    ]
    if not tokens:
        return None
    return re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))


def end_at_eos(encoder, template: str) -> str:
    """The chat template to keep with the reward model: a conversation that ends with an assistant message then
    ends at that message's EOS, as TextEncoder.render does.

    ChatML-style templates put a newline after each turn's end token. Tools that score by rendering the whole
    conversation (TRL's GRPO trainer: apply_chat_template(prompt + completion), then the logit at the last
    non-pad token) would otherwise read the reward at that newline instead of at the EOS it was trained on. The
    original template is kept whole inside a Jinja block; only that one trailing suffix is cut, and only when the
    conversation ends with an assistant turn and no generation prompt is asked for."""
    tok = encoder.tokenizer
    full = tok.apply_chat_template(_PROBE + [{"role": "assistant", "content": "Blue."}], tokenize=False)
    ours = encoder.render(_PROBE, "Blue.")
    if full == ours or not full.startswith(ours):
        return template  # already ends at the EOS, or renders completions differently: leave it as it is
    suffix = full[len(ours) :]
    wrapped = (
        "{% set rankrm_rendered %}" + template + "{% endset %}"
        "{% if messages and messages[-1]['role'] == 'assistant' and not add_generation_prompt "
        f"and rankrm_rendered.endswith({suffix!r}) %}}{{{{ rankrm_rendered[:-{len(suffix)}] }}}}"
        "{% else %}{{ rankrm_rendered }}{% endif %}"
    )

    def render_with(t, messages, gen):
        tok.chat_template, saved = t, tok.chat_template
        try:
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        finally:
            tok.chat_template = saved

    convo = _PROBE + [{"role": "assistant", "content": "Blue."}]
    ok = render_with(wrapped, convo, False) == full[: -len(suffix)] and render_with(
        wrapped, _PROBE, True
    ) == render_with(template, _PROBE, True)
    return wrapped if ok else template


@dataclass
class TokenizedGroup:
    """A ranked group as token ids: one row per completion (prompt + completion + EOS)."""

    ids: list[list[int]]
    ranks: list[int]
    stated_pairs: list[tuple[int, int]] | None = None  # a partial order's (winner, loser) pairs; None: from ranks
    counts: list[int] | None = None  # times each stated pair was stated (several annotators); None: once each
    subset: str | None = None  # the group's subset / category, for per-subset metrics
    chars: list[int] | None = None  # characters of each completion (its text, before rendering), for length metrics
    fields: dict[str, list] | None = None  # record field -> one value per pair of comparisons() (pairwise sources)
    margins: list[float] | None = None  # one per pair of comparisons(), in that order (--margin-scale uses them)
    attributes: dict[str, list] | None = None  # attribute name -> one rating (None: not given) per completion

    @property
    def tokens(self) -> int:
        return sum(len(x) for x in self.ids)

    @functools.cached_property
    def prompt_length(self) -> int:
        """Leading tokens all completions share (the prompt, at least), leaving each row its last token."""
        return shared_prefix_length(self.ids)

    def comparisons(self) -> list[tuple[int, int]]:
        """Every (winner, loser) index pair this group states: its partial order, else every pair its ranks order."""
        return comparisons(self.ranks, self.stated_pairs)

    def votes(self) -> list[int]:
        """How many times each pair of comparisons() was stated."""
        return votes(self.ranks, self.stated_pairs, self.counts)


def shared_prefix_length(rows: list[list[int]]) -> int:
    """How many leading tokens all rows share (the prompt, at least), leaving each row its last token."""
    n = min(len(r) for r in rows) - 1
    first = rows[0]
    if n <= 0:
        return n
    # a binary search on slice equality (compared in C) instead of a Python loop over positions: planning asks
    # this of every group of every step, and on a GPU such host work is the step (docs/benchmarks.md, "Host work per step")
    for r in rows[1:]:
        if r[:n] == first[:n]:
            continue
        lo, hi = 0, n  # first[:lo] == r[:lo], first[:hi] != r[:hi]
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if r[:mid] == first[:mid] else (lo, mid)
        n = lo
    return n


def tokenize_groups(model, groups) -> tuple[list[TokenizedGroup], int]:
    """Tokenize every group through model.tokenize in one call; returns (groups, completions truncated)."""
    prompts = [g.prompt for g in groups for _ in g.completions]
    completions = [c for g in groups for c in g.completions]
    ids, cut = model.tokenize(prompts, completions)
    out, at = [], 0
    for g in groups:
        stated = None if g.stated_pairs is None else [tuple(p) for p in g.stated_pairs]
        counts = None if g.counts is None else list(g.counts)
        chars = [len(c) for c in g.completions]
        fields = None if g.fields is None else {k: list(v) for k, v in g.fields.items()}
        margins = None if g.margins is None else list(g.margins)
        attributes = None if g.attributes is None else attribute_columns(g.attributes)
        out.append(
            TokenizedGroup(
                ids[at : at + g.k], list(g.ranks), stated, counts, g.subset, chars, fields, margins, attributes
            )
        )
        at += g.k
    return out, sum(cut)


def attribute_columns(ratings) -> dict[str, list]:
    """Per-completion ratings ([{name: value}, ...]) as columns {name: [value or None per completion]}, names
    sorted: the form the store keeps and the batches read."""
    names = sorted({name for r in ratings for name in (r or {})})
    return {name: [(r or {}).get(name) for r in ratings] for name in names}


def shuffled_pairs(groups: list[TokenizedGroup]) -> list[TokenizedGroup]:
    """Every stated vote as its own K=2 group (the pairwise-only regime InstructGPT found to overfit): a comparison
    stated n times is n examples, as its count weighs it n times in the grouped loss; each keeps its margin."""
    return [
        TokenizedGroup([g.ids[w], g.ids[l]], [0, 1], margins=None if g.margins is None else [g.margins[i]])
        for g in groups
        for i, ((w, l), n) in enumerate(zip(g.comparisons(), g.votes()))
        for _ in range(n)
    ]
