"""The batch targets of rated attributes and the reward's weights, with their errors."""

import pytest
import torch

from rankrm.data.encode import TokenizedGroup
from rankrm.errors import SettingsError
from rankrm.modeling.ratings import attribute_targets, choose_attributes, parse_weights, reward_weights


def test_targets_in_group_order_with_the_missing_masked():
    groups = [
        TokenizedGroup([[1, 2], [1, 3]], [0, 1], attributes={"x": [3.0, None], "y": [1.0, 2.0]}),
        TokenizedGroup([[4, 5]], [0]),  # unrated
        TokenizedGroup([[6, 7]], [0], attributes={"y": [0.5]}),
    ]
    t, m = attribute_targets(groups, ("x", "y"))
    assert t.tolist() == [[3.0, 1.0], [0.0, 2.0], [0.0, 0.0], [0.0, 0.5]]
    assert m.tolist() == [[True, True], [False, True], [False, False], [False, True]]
    assert t.dtype == torch.float32


def test_choose_attributes():
    rated = {"quality": 10, "humor": 4}
    assert choose_attributes("auto", rated) == ("humor", "quality")
    assert choose_attributes("quality", rated) == ("quality",)
    with pytest.raises(SettingsError, match="'toxicity' is not rated.*humor, quality"):
        choose_attributes("quality,toxicity", rated)
    with pytest.raises(SettingsError, match="no rated attributes"):
        choose_attributes("auto", {})


def test_weights():
    assert parse_weights("quality=1, humor=-0.5") == {"quality": 1.0, "humor": -0.5}
    assert reward_weights(("humor", "quality"), {"quality": 1.0}) == (0.0, 1.0)
    assert reward_weights(("a", "b", "c", "d"), None) == (0.25, 0.25, 0.25, 0.25)
    with pytest.raises(SettingsError, match="unknown attribute 'toxicity'.*humor, quality"):
        reward_weights(("humor", "quality"), {"toxicity": 1.0})
    for bad in ("quality", "quality=high", "=1", "quality=nan"):
        with pytest.raises(SettingsError, match="is not name=number"):
            parse_weights(bad)
    with pytest.raises(SettingsError, match="given twice"):
        parse_weights("a=1,a=2")
