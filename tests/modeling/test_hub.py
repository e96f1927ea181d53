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


def test_the_hub_is_probed_once_a_minute_and_again_after(monkeypatch):
    """A run's several loads share one probe of the hub (a refused or hung connection is not retried at each load);
    past PROBE_TTL_S the next call probes again and sees the hub come back. A real listener on loopback port 443."""
    import socket

    from rankrm.modeling import hub

    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_REACHABLE", {})
    server = socket.socket()
    try:
        server.bind(("127.0.0.1", 443))
    except OSError as e:  # not root, or the port is taken
        server.close()
        pytest.skip(f"cannot listen on 127.0.0.1:443 here ({e})")
    with server:
        assert not hub.hub_reachable(timeout=1)  # bound but not listening: refused
        server.listen(4)
        assert not hub.hub_reachable(timeout=1)  # the answer of a moment ago, not a second probe
        monkeypatch.setattr(hub, "PROBE_TTL_S", 0.0)
        assert hub.hub_reachable(timeout=1)  # the minute is over: probed again, and it answers
