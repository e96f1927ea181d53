"""serving/server.py: the listening socket, which hosts count as this machine, and the model's problem type."""

from __future__ import annotations

import json

from rankrm.serving.server import is_loopback, problem_type_of


def test_listening_socket_is_tcp_with_nodelay():
    """asyncio sets TCP_NODELAY only on sockets made with proto IPPROTO_TCP; without it a kept-alive connection
    waited ~40 ms per response (Nagle + delayed ACK), as the load benchmark found."""
    import socket

    from rankrm.serving.server import bind

    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        sock.close()


def test_only_loopback_addresses_and_localhost_count_as_this_machine():
    assert [is_loopback(h) for h in ("localhost", "127.0.0.1", "127.8.9.1", "::1")] == [True] * 4
    assert [is_loopback(h) for h in ("0.0.0.0", "192.168.1.5", "::", "myhost")] == [False] * 4  # a name may be anywhere


def test_the_problem_type_is_read_from_the_models_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"problem_type": "regression", "num_labels": 1}))
    assert problem_type_of(str(tmp_path)) == "regression"
    (tmp_path / "config.json").write_text("{}")
    assert problem_type_of(str(tmp_path)) is None and problem_type_of(str(tmp_path / "none")) is None
