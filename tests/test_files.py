"""Saved files get the mode the umask gives (as open() would), whatever library wrote them."""

import os
import stat

import pytest
import torch

from rankrm.files import atomic_dir, umask
from rankrm.modeling.model import RewardModel
from rankrm.training.checkpoint import save_checkpoint


@pytest.fixture
def set_umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


def modes(root) -> dict[str, int]:
    return {
        str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")] if p != root.parent
    }


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_saved_model_and_checkpoint_files_get_the_umasks_mode(
    model_dirs, tmp_path, set_umask, mask, file_mode, dir_mode
):
    """transformers writes model.safetensors through mkstemp (0600): the model directory and a checkpoint are
    0644 / 0755 under umask 022, 0640 / 0750 under 027, like every file open() makes."""
    set_umask(mask)
    assert umask() == mask
    model = RewardModel.from_pretrained(str(model_dirs["llama-chat"]))
    out = tmp_path / "model"
    model.save_pretrained(out, extra_files={"eval_results.json": "{}\n"})
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(params.values())
    ck = save_checkpoint(out / "checkpoints", 1, params, opt.state_dict(), {}, {}, {}, keep=2)
    got = modes(out)
    assert "model.safetensors" in got and any(k.startswith("checkpoints/step-1/") for k in got)
    for name, mode in got.items():
        want = dir_mode if (out / name).is_dir() else file_mode
        assert mode == want, f"{name}: {oct(mode)}, want {oct(want)}"
    assert ck.is_dir()


def test_atomic_dir_gives_files_made_private_the_umasks_mode(tmp_path, set_umask):
    with atomic_dir(tmp_path / "d") as tmp:
        fd = os.open(tmp / "private", os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
        (tmp / "sub").mkdir(mode=0o700)
    assert stat.S_IMODE((tmp_path / "d" / "private").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d" / "sub").stat().st_mode) == 0o755
