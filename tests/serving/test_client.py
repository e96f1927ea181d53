"""The saved reward model in the RL tools people use: TRL's own input preparation and reward functions."""

import os

import pytest
import torch

from rankrm.modeling.model import RewardModel

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
trl = pytest.importorskip("trl")

CONVOS = [
    ([{"role": "user", "content": "Which colour is the sky?"}], "Blue, on a clear day."),
    (
        [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "and 3+3?"},
        ],
        "6",
    ),
]


@pytest.fixture(params=["llama-pad_eos", "qwen2-chat", "gpt2-chat"])
def saved(request, model_dirs, tmp_path):
    torch.manual_seed(0)
    m = RewardModel.from_pretrained(str(model_dirs[request.param]))
    with torch.no_grad():
        m.head.weight.normal_()
    m.save_pretrained(tmp_path / "rm")
    return str(tmp_path / "rm")


def test_grpo_reward_model_path_reads_the_trained_reward(saved):
    """GRPOTrainer scores with apply_chat_template(prompt + completion), right padding, no special tokens, and
    the model's logits[:, 0]; the chat template saved with the model makes that the text rankrm read."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl.data_utils import apply_chat_template

    ours = RewardModel.from_pretrained(saved)
    hf = AutoModelForSequenceClassification.from_pretrained(saved).eval()
    tok = AutoTokenizer.from_pretrained(saved)
    texts = [
        apply_chat_template({"messages": p + [{"role": "assistant", "content": c}]}, tok)["text"] for p, c in CONVOS
    ]
    assert texts == [ours.render(p, c) for p, c in CONVOS]
    enc = tok(text=texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    with torch.no_grad():
        trl_rewards = hf(**enc).logits[:, 0].tolist()
    assert trl_rewards == pytest.approx([ours.score([p], [c])[0] for p, c in CONVOS], abs=1e-4)


def test_ppo_get_reward_reads_the_trained_reward(saved):
    """TRL's get_reward (PPO/RLOO): query + response ids padded with the pad token; reward at the last token."""
    from transformers import AutoModelForSequenceClassification
    from trl.experimental.utils import get_reward

    ours = RewardModel.from_pretrained(saved)
    hf = AutoModelForSequenceClassification.from_pretrained(saved).eval()
    pad = ours.tokenizer.pad_token_id
    p, c = CONVOS[0]
    context = ours.tokenizer(ours.render_prompt(p), add_special_tokens=False).input_ids
    full = ours.tokenizer(ours.render(p, c), add_special_tokens=False).input_ids
    assert full[: len(context)] == context
    rows = torch.tensor([full + [pad] * 3, full[:-2] + [ours.tokenizer.eos_token_id] + [pad] * 4])
    with torch.no_grad():
        _, rewards, _ = get_reward(hf, rows, pad, len(context))
    assert rewards[0].item() == pytest.approx(ours.score([p], [c])[0], abs=1e-4)
    assert rewards[0].item() != pytest.approx(rewards[1].item(), abs=1e-6)  # a different response scores apart
