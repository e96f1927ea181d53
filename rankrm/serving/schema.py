"""Request and response bodies of `rankrm serve`, and the JSON error every bad request gets.

Shapes follow the callers: /score and /rank are rankrm's own; /get_reward is OpenRLHF's remote reward model
(openrlhf/cli/serve_rm.py: {"query": [...]} in, {"rewards": [...]} out); /classify is vLLM's classification API
(vllm/entrypoints/pooling/classify/protocol.py), as verl's reward loop calls it."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Message(BaseModel):
    """One chat message; fields beyond role and content are passed to the chat template as they are."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool"]
    content: str


Prompt = str | list[Message]


def prompt_value(prompt: Prompt):
    """A prompt as RewardModel.render takes it: the string, or the messages as plain dicts."""
    return prompt if isinstance(prompt, str) else [m.model_dump() for m in prompt]


class ScoreItem(BaseModel):
    prompt: Prompt = Field(description="the prompt: text used verbatim, or chat messages (the chat template)")
    completion: str = Field(description="the response to score (may be empty)")


class ScoreRequest(BaseModel):
    items: list[ScoreItem] = Field(min_length=1, description="(prompt, completion) pairs, scored independently")


class ScoreResponse(BaseModel):
    rewards: list[float] = Field(description="one reward per item, in input order (reward_bias included)")
    truncated: list[bool] = Field(
        description="whether the item was longer than max_length and lost the start of its prompt"
    )
    model: str
    reward_std: list[float] | None = Field(
        default=None, description="an ensemble's spread: the standard deviation of its members' rewards"
    )
    outputs: dict[str, list[float]] | None = Field(
        default=None, description="a multi-output head's other outputs by name (an ensemble's members, ODIN's length)"
    )


class RankGroup(BaseModel):
    prompt: Prompt
    completions: list[str] = Field(min_length=1, description="the completions to rank; the prompt is read once")


class RankRequest(BaseModel):
    """Either one group ({"prompt", "completions"}) or several ({"groups": [...]})."""

    prompt: Prompt | None = None
    completions: list[str] | None = None
    groups: list[RankGroup] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def one_form(self):
        single = self.prompt is not None or self.completions is not None
        if single == (self.groups is not None):
            raise ValueError(
                'give either "prompt" and "completions" (one group) or "groups" (a list of '
                '{"prompt", "completions"}), not both and not neither'
            )
        if single and (self.prompt is None or not self.completions):
            raise ValueError('one group needs both "prompt" and a non-empty "completions" list')
        return self

    def as_groups(self) -> list[RankGroup]:
        return self.groups if self.groups is not None else [RankGroup(prompt=self.prompt, completions=self.completions)]


class RankedGroup(BaseModel):
    rewards: list[float] = Field(description="one reward per completion, in input order")
    order: list[int] = Field(description="completion indices, best first (equal rewards keep input order)")
    truncated: list[bool]
    reward_std: list[float] | None = Field(
        default=None, description="an ensemble's spread: the standard deviation of its members' rewards"
    )
    outputs: dict[str, list[float]] | None = Field(
        default=None, description="a multi-output head's other outputs by name (an ensemble's members, ODIN's length)"
    )


class RankResponse(BaseModel):
    """A one-group request gets rewards, order and truncated at the top level; a "groups" request gets groups."""

    rewards: list[float] | None = None
    order: list[int] | None = None
    truncated: list[bool] | None = None
    groups: list[RankedGroup] | None = None
    model: str
    reward_std: list[float] | None = Field(
        default=None, description="an ensemble's spread: the standard deviation of its members' rewards"
    )
    outputs: dict[str, list[float]] | None = Field(
        default=None, description="a multi-output head's other outputs by name (an ensemble's members, ODIN's length)"
    )


class GetRewardRequest(BaseModel):
    """OpenRLHF's remote reward model request. Each query is the full text the reward model reads: its rendering
    of prompt + response (RewardModel.render), with or without the final EOS and leading BOS; padding around
    it is dropped. prompts and labels are accepted as OpenRLHF sends them and not used."""

    model_config = ConfigDict(extra="allow")
    query: list[str] = Field(min_length=1)
    prompts: list[Any] | None = None
    labels: list[Any] | None = None

    @model_validator(mode="after")
    def same_lengths(self):
        for name in ("prompts", "labels"):
            value = getattr(self, name)
            if value is not None and len(value) != len(self.query):
                raise ValueError(
                    f'"{name}" has {len(value)} entries and "query" {len(self.query)}; they must be the same length'
                )
        return self


class GetRewardResponse(BaseModel):
    rewards: list[float]
    scores: list[float] = Field(description="the same numbers as rewards (OpenRLHF reads either)")
    extra_logs: dict[str, list[float]] = Field(description="per-query values OpenRLHF logs: rankrm_truncated")
    truncated: list[bool]


class ClassifyRequest(BaseModel):
    """vLLM's /classify request: "input" (full texts, as /get_reward's queries) or "messages" (a conversation
    that ends with the assistant reply to score). Other vLLM fields are accepted and not used."""

    model_config = ConfigDict(extra="allow")
    model: str | None = Field(default=None, description="any name is accepted; the answer names the served model")
    input: str | list[str] | None = None
    messages: list[Message] | None = None
    use_activation: bool | None = Field(
        default=None,
        description="false: the raw reward; true: its sigmoid; "
        "unset: sigmoid unless config.json says problem_type regression (vLLM)",
    )
    activation: bool | None = Field(default=None, description="the older vLLM name of use_activation")
    add_special_tokens: bool | None = Field(
        default=None,
        description="accepted; rankrm always reads the text as the model renders it (its BOS added when missing)",
    )
    truncate_prompt_tokens: int | None = Field(
        default=None, description="-1, unset or at least max_length: inputs are cut from the left to max_length"
    )

    @field_validator("input", mode="before")
    @classmethod
    def no_token_ids(cls, value):
        if isinstance(value, list) and any(isinstance(v, int) or isinstance(v, list) for v in value):
            raise ValueError("token ids are not supported: rankrm reads text as its model renders it; send the text")
        return value

    @model_validator(mode="after")
    def one_form(self):
        if (self.input is None) == (self.messages is None):
            raise ValueError('give either "input" (a text or a list of texts) or "messages", not both')
        if isinstance(self.input, list) and not self.input:
            raise ValueError('"input" is an empty list; give at least one text')
        if self.messages is not None and (len(self.messages) < 2 or self.messages[-1].role != "assistant"):
            raise ValueError('"messages" must end with the assistant reply to score, after at least one message')
        return self


class ClassificationData(BaseModel):
    """vLLM's item; a multi-output head adds "reward_std" (an ensemble's spread) and "outputs" (its others)."""

    model_config = ConfigDict(extra="allow")
    index: int
    label: str | None
    probs: list[float]
    num_classes: int
    truncated: bool


class ClassifyResponse(BaseModel):
    id: str
    object: str = "list"
    created: int
    model: str
    data: list[ClassificationData]
    usage: dict[str, Any]


# -- errors ------------------------------------------------------------------------------------------------------

FIXES = {  # what a correct body looks like, per endpoint
    "/score": 'send {"items": [{"prompt": "..." or [{"role": "user", "content": "..."}], "completion": "..."}]}',
    "/rank": 'send {"prompt": ..., "completions": ["...", ...]} or {"groups": [{"prompt": ..., "completions": '
    "[...]}, ...]}",
    "/get_reward": 'send {"query": ["<rendered prompt + response>", ...]} (OpenRLHF\'s remote reward model)',
    "/classify": 'send {"input": "<rendered prompt + response>" or [...], "use_activation": false} or '
    '{"messages": [..., {"role": "assistant", "content": "..."}]} (vLLM\'s /classify)',
}
_TYPE_TAG = re.compile(r"^(str|int|float|bool|list|dict|none|function-\w+|.*\[.*\].*)$")


def error_body(status: int, message: str, field: str | None = None, fix: str | None = None) -> dict:
    """The JSON of every error: OpenAI-style {"error": {...}} naming the field and the fix."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": field, "code": status, "fix": fix}}


def field_path(loc) -> str:
    """("body", "items", 0, "prompt", "str") -> "items[0].prompt" (pydantic's union-member tags dropped)."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _TYPE_TAG.match(str(part)):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def validation_message(errors: list[dict]) -> tuple[str, str]:
    """(field, message) of pydantic's errors: the most specific field named (a union's deepest member), its
    problems joined."""
    first = field_path(max(errors, key=lambda e: len(e.get("loc", ()))).get("loc", ()))
    problems = []
    for e in errors:
        if field_path(e.get("loc", ())) == first and e.get("msg") not in problems:
            problems.append(e.get("msg", "invalid"))
    more = len({field_path(e.get("loc", ())) for e in errors}) - 1
    tail = f" (and {more} more field{'s' if more > 1 else ''})" if more > 0 else ""
    return first, f"{first}: {'; or '.join(problems[:3])}{tail}"
