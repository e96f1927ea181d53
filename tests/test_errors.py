"""rankrm/errors.py: one base a CLI can catch, each class also the built-in error it would be without us, and a
DataError that crosses process boundaries whole (datasets.map workers send it back pickled)."""

import errno
import pickle

import pytest

import rankrm
from rankrm import errors
from rankrm.files import WriteError
from rankrm.training.checkpoint import CheckpointError
from rankrm.training.loop import NonFiniteError


@pytest.mark.parametrize(
    "cls, builtin",
    [
        (errors.DataError, ValueError),
        (errors.SettingsError, ValueError),
        (errors.ModelError, OSError),
        (errors.CheckpointError, ValueError),
        (errors.WriteError, OSError),
        (errors.NonFiniteError, ValueError),
    ],
)
def test_every_error_a_user_can_fix_is_a_rankrm_error_and_its_builtin(cls, builtin):
    assert issubclass(cls, errors.RankrmError) and issubclass(cls, builtin)


def test_the_errors_are_one_class_wherever_they_are_imported_from():
    assert rankrm.DataError is errors.DataError
    assert (WriteError, CheckpointError, NonFiniteError) == (
        errors.WriteError,
        errors.CheckpointError,
        errors.NonFiniteError,
    )


def test_data_error_names_file_line_field_and_fix_and_survives_pickling():
    e = errors.DataError("d.jsonl", 7, "ranks[2]", "expected an integer, got 'x'", "write ranks as integers")
    assert str(e) == "d.jsonl:7: field 'ranks[2]': expected an integer, got 'x'. Fix: write ranks as integers"
    assert e.reason == "ranks[]: expected an integer, got 'x'"  # the index dropped: one count per kind
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is errors.DataError and str(back) == str(e)
    assert (back.path, back.line, back.field, back.fix, back.reason) == (e.path, e.line, e.field, e.fix, e.reason)
    assert str(errors.DataError("d.parquet", None, None, "has no records", "give one")) == (
        "d.parquet: has no records. Fix: give one"
    )


def test_write_error_keeps_its_errno():
    e = WriteError(errno.ENOSPC, "cannot write /x: the disk is full. Fix: free space or choose another path")
    assert e.errno == errno.ENOSPC and "the disk is full" in str(e)
