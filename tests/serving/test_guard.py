"""serving/guard.py: a bug is answered 500 with an id that the server log holds, with its traceback."""

import logging

from rankrm.serving.guard import ServeOptions, internal_error


def test_an_internal_error_gets_an_id_in_the_answer_and_in_the_log(caplog):
    try:
        raise KeyError("oops")
    except KeyError as exc:
        with caplog.at_level(logging.ERROR, logger="rankrm.serve"):
            err = internal_error(exc, "rendering a prompt")
        again = internal_error(exc, "x")
    assert err.status == 500 and len(err.error_id) == 12
    assert err.message == (
        f"internal error {err.error_id} while rendering a prompt (KeyError); the server log holds its traceback"
    )
    record = caplog.records[0]
    assert record.getMessage() == f"internal error {err.error_id} while rendering a prompt: KeyError: 'oops'"
    assert record.exc_info[0] is KeyError  # the traceback goes to the log
    assert again.error_id != err.error_id and len(caplog.records) == 2  # a fresh id for each


def test_the_servers_limits_default_to_the_documented_values():
    o = ServeOptions()
    assert (o.api_key, o.max_batch_tokens, o.max_queue, o.max_items, o.max_body_bytes) == (None, 4096, 256, 4096, 2**24)
