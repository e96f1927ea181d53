"""The multi-output head (heads.py): its description, its outputs, and saving and loading it."""

import json
import math

import pytest
import torch
from torch import nn

from rankrm.errors import ModelError, SettingsError
from rankrm.modeling.batch import collate_rows
from rankrm.modeling.heads import HeadSpec, add_reward_bias, output_fields, tie_reward_row
from rankrm.modeling.model import RewardModel, batch_outputs, batch_rewards

PROMPTS = ["Name a colour.", "2+2?", "Say hi."]
COMPLETIONS = ["Blue, the colour of the sky.", "4", "hi there, how are you today?"]


def load(model_dirs, head=None, name="llama-chat") -> RewardModel:
    torch.manual_seed(0)
    return RewardModel.from_pretrained(str(model_dirs[name]), max_length=128, head=head)


def test_spec_round_trips_through_json_and_a_missing_spec_is_scalar():
    for spec in (HeadSpec(), HeadSpec.ensemble(3), HeadSpec.odin(), HeadSpec("attributes", ("a", "b"), (0.5, 0.5))):
        assert HeadSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    assert HeadSpec.from_json(None) == HeadSpec() and HeadSpec().num_outputs == 1
    assert HeadSpec.ensemble(3).num_outputs == 4 and HeadSpec.ensemble(3).names[0] == "member_1"
    assert HeadSpec.odin().id2label == {0: "reward", 1: "length"}


@pytest.mark.parametrize(
    "kind, names, weights, match",
    [
        ("linear", (), (), "unknown kind"),
        ("ensemble", ("m1",), (), "at least 2 members"),
        ("scalar", ("x",), (), "no extra outputs"),
        ("odin", ("size",), (), "'length'"),
        ("attributes", ("a", "a"), (), "distinct"),
        ("attributes", ("a", "b"), (1.0,), "as many reward weights"),
        ("ensemble", ("a", "b"), (1.0, 1.0), "only an attributes head"),
    ],
)
def test_bad_specs_are_refused_naming_the_problem(kind, names, weights, match):
    with pytest.raises(SettingsError, match=match):
        HeadSpec(kind, names, weights)


def test_a_damaged_saved_spec_is_a_model_error():
    with pytest.raises(ModelError, match="field 'head'"):
        HeadSpec.from_json({"names": ["x"]})


def test_tie_reward_row_sets_row_zero_to_the_members_mean_by_hand():
    """Members' rows (1, 2), (3, 6), (5, 1) with biases 1, 2, 6: their mean is (3, 3) and bias 3."""
    head = nn.Linear(2, 4)
    with torch.no_grad():
        head.weight[:] = torch.tensor([[9.0, 9.0], [1.0, 2.0], [3.0, 6.0], [5.0, 1.0]])
        head.bias[:] = torch.tensor([9.0, 1.0, 2.0, 6.0])
    tie_reward_row(head, HeadSpec.ensemble(3))
    assert head.weight[0].tolist() == [3.0, 3.0] and head.bias[0].item() == 3.0
    # attributes with weights 0.5, 0.25: row 0 = 0.5 * (1, 2) + 0.25 * (3, 6) = (1.25, 2.5); bias 0.5 + 0.5 = 1
    head3 = nn.Linear(2, 3)
    with torch.no_grad():
        head3.weight[1:] = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
        head3.bias[1:] = torch.tensor([1.0, 2.0])
    tie_reward_row(head3, HeadSpec("attributes", ("a", "b"), (0.5, 0.25)))
    assert head3.weight[0].tolist() == [1.25, 2.5] and head3.bias[0].item() == 1.0
    odin = nn.Linear(2, 2)
    before = odin.weight.detach().clone()
    tie_reward_row(odin, HeadSpec.odin())  # ODIN's quality row is trained, not derived
    assert torch.equal(odin.weight, before)


def test_reward_bias_goes_to_the_reward_and_to_every_ensemble_member():
    out = torch.tensor([[1.0, 10.0], [2.0, 20.0]])
    assert add_reward_bias(out, 0.5, HeadSpec.odin()).tolist() == [[1.5, 10.0], [2.5, 20.0]]  # length untouched
    three = torch.tensor([[2.0, 1.0, 3.0]])  # an ensemble's mean and its two members: all shift alike
    assert add_reward_bias(three, 0.5, HeadSpec.ensemble(2)).tolist() == [[2.5, 1.5, 3.5]]
    assert add_reward_bias(out[:, :1], 0.5, HeadSpec()).tolist() == [[1.5], [2.5]]


def test_output_fields_name_each_column_and_the_spread_by_hand():
    """Members 1, 2, 3 (mean 2): population std sqrt(((1-2)^2 + 0 + (3-2)^2) / 3) = sqrt(2/3)."""
    out = torch.tensor([[2.0, 1.0, 2.0, 3.0]])
    f = output_fields(out, HeadSpec.ensemble(3))
    assert f["reward"] == [2.0] and f["member_3"] == [3.0]
    assert f["reward_std"][0] == pytest.approx(math.sqrt(2 / 3), abs=1e-12)
    assert output_fields(torch.tensor([[1.0, 7.0]]), HeadSpec.odin()) == {"reward": [1.0], "length": [7.0]}


def test_scalar_forward_is_the_head_at_eos_to_the_last_bit(model_dirs):
    """The scalar head's path: (N, 1) outputs whose column is exactly head(h_eos) + reward_bias."""
    m = load(model_dirs)
    m.reward_bias = 0.25
    ids, _ = m.tokenize(PROMPTS, COMPLETIONS)
    b = collate_rows(ids, m.tokenizer.pad_token_id)
    with torch.no_grad():
        out = batch_outputs(m, b)
        h = m.backbone(input_ids=b.input_ids, attention_mask=b.attention_mask).last_hidden_state
        want = m.head(h.reshape(-1, h.shape[-1])[b.end_index]).squeeze(-1).float() + 0.25
    assert out.shape == (3, 1) and m.hf.config.id2label == {0: "reward"}
    assert torch.equal(out[:, 0], want) and torch.equal(batch_rewards(m, b), want)


def test_ensemble_outputs_saved_loaded_and_read_by_plain_transformers(model_dirs, tmp_path):
    """A 3-member ensemble: score_outputs' reward and reward_std are the mean and spread of the members, computed
    here by hand from the head's rows; the saved model loads back with its head and in plain transformers, whose
    first logit is the reward."""
    from transformers import AutoModelForSequenceClassification

    spec = HeadSpec.ensemble(3)
    m = load(model_dirs, spec)
    with torch.no_grad():
        m.head.weight.normal_()  # members far apart
    tie_reward_row(m.head, spec)
    assert m.head.out_features == 4 and m.hf.config.id2label[2] == "member_2"
    f = m.score_outputs(PROMPTS, COMPLETIONS)
    ids, _ = m.tokenize(PROMPTS, COMPLETIONS)
    with torch.no_grad():
        members = []
        for row in ids:  # one sequence at a time: the member rows applied to the EOS hidden state
            h = m.backbone(input_ids=torch.tensor([row])).last_hidden_state[0, -1].double()
            members.append([float(h @ m.head.weight[j].double()) for j in (1, 2, 3)])
    members = torch.tensor(members, dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(f["reward"], dtype=torch.float64), members.mean(1), rtol=1e-4, atol=1e-5)
    std = members.std(1, correction=0)
    torch.testing.assert_close(torch.tensor(f["reward_std"], dtype=torch.float64), std, rtol=1e-4, atol=1e-5)
    assert float(std.min()) > 1e-3  # the members disagree, so a wrong spread would show
    assert f["reward"] == m.score(PROMPTS, COMPLETIONS)
    torch.testing.assert_close(torch.tensor(f["member_1"], dtype=torch.float64), members[:, 0], rtol=1e-4, atol=1e-5)

    m.save_pretrained(tmp_path / "rm")
    assert json.loads((tmp_path / "rm" / "rankrm.json").read_text())["head"] == spec.to_json()
    back = RewardModel.from_pretrained(str(tmp_path / "rm"))
    assert back.head_spec == spec and back.score_outputs(PROMPTS, COMPLETIONS) == f
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    assert hf.config.id2label == {0: "reward", 1: "member_1", 2: "member_2", 3: "member_3"}
    with torch.no_grad():
        first = [float(hf(input_ids=torch.tensor([row])).logits[0, 0]) for row in ids]
    assert first == pytest.approx(f["reward"], rel=1e-4, abs=1e-5)


def test_a_saved_head_wins_and_a_conflicting_head_is_refused(model_dirs, tmp_path):
    m = load(model_dirs, HeadSpec.odin())
    m.save_pretrained(tmp_path / "rm")
    assert RewardModel.from_pretrained(str(tmp_path / "rm"), head=HeadSpec.odin()).head_spec == HeadSpec.odin()
    with pytest.raises(SettingsError, match="holds a trained odin head .* Fix: leave the head setting out"):
        RewardModel.from_pretrained(str(tmp_path / "rm"), head=HeadSpec.ensemble(2))


def test_a_model_saved_before_heads_existed_loads_as_scalar(model_dirs, tmp_path):
    m = load(model_dirs)
    m.save_pretrained(tmp_path / "rm")
    meta_file = tmp_path / "rm" / "rankrm.json"
    meta = json.loads(meta_file.read_text())
    del meta["head"]
    meta_file.write_text(json.dumps(meta))
    back = RewardModel.from_pretrained(str(tmp_path / "rm"))
    assert back.head_spec == HeadSpec() and back.score(PROMPTS, COMPLETIONS) == m.score(PROMPTS, COMPLETIONS)


def test_a_head_of_the_wrong_width_is_refused(model_dirs):
    m = load(model_dirs)
    with pytest.raises(ModelError, match="1 outputs, its ensemble head description 3"):
        RewardModel(m.hf, encoder=m.encoder, head=HeadSpec.ensemble(2))
