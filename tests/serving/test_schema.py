"""serving/schema.py: the request forms a route accepts, and pydantic's errors as one message naming the field."""

import pytest
from pydantic import ValidationError

from rankrm.serving.schema import RankRequest, error_body, field_path, validation_message


def test_field_paths_drop_the_body_and_pydantics_union_tags():
    assert field_path(("body", "items", 0, "prompt", "str")) == "items[0].prompt"
    assert field_path(("body", "groups", 1, "completions", 2)) == "groups[1].completions[2]"
    assert field_path(("body",)) == "body" and field_path(()) == "body"


def test_the_deepest_field_is_named_with_its_problems_and_a_count_of_the_rest():
    errors = [
        {"loc": ("body", "items", 0, "prompt", "str"), "msg": "Input should be a valid string"},
        {"loc": ("body", "items", 0, "prompt", "list[Message]"), "msg": "Input should be a valid list"},
        {"loc": ("body", "model"), "msg": "Field required"},
    ]
    assert validation_message(errors) == (
        "items[0].prompt",
        "items[0].prompt: Input should be a valid string; or Input should be a valid list (and 1 more field)",
    )
    assert validation_message(errors[2:]) == ("model", "model: Field required")


def test_error_bodies_are_openai_shaped_and_tell_input_from_server_errors():
    assert error_body(422, "bad", "items[0]", "send text") == {
        "error": {
            "message": "bad",
            "type": "invalid_request_error",
            "param": "items[0]",
            "code": 422,
            "fix": "send text",
        }
    }
    assert error_body(500, "bug")["error"]["type"] == "server_error"


def test_a_rank_request_is_one_group_or_several_never_both():
    one = RankRequest(prompt="p", completions=["a", "b"]).as_groups()
    assert [(g.prompt, g.completions) for g in one] == [("p", ["a", "b"])]
    several = RankRequest(groups=[{"prompt": "p", "completions": ["a"]}, {"prompt": "q", "completions": ["b"]}])
    assert [g.prompt for g in several.as_groups()] == ["p", "q"]
    for body, says in [
        ({"prompt": "p", "completions": ["a"], "groups": [{"prompt": "q", "completions": ["b"]}]}, "not both"),
        ({}, "not neither"),
        ({"prompt": "p"}, 'one group needs both "prompt" and a non-empty "completions" list'),
        ({"prompt": "p", "completions": []}, "non-empty"),
    ]:
        with pytest.raises(ValidationError, match=says):
            RankRequest(**body)
