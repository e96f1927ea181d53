"""modeling/hub.py: a local model directory is used as is; what is not a model is named with the fix."""

import pytest

from rankrm.errors import ModelError
from rankrm.modeling.hub import resolve


def test_a_local_model_directory_is_used_as_is_and_other_paths_are_refused(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert resolve(str(model)) == str(model)
    with pytest.raises(ModelError, match=r"a directory, but not a Hugging Face model \(no config.json\). Fix:"):
        resolve(str(tmp_path))
    (tmp_path / "w.bin").write_bytes(b"0")
    with pytest.raises(ModelError, match=r"w.bin: a file, not a model directory. Fix: pass the directory"):
        resolve(str(tmp_path / "w.bin"))
