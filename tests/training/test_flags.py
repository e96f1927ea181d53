"""training/flags.py: defaults < YAML < command-line flags, keys spelled either way, old names read."""

import argparse

import pytest

from rankrm.errors import SettingsError
from rankrm.training.flags import config_from_args, read_yaml, train_flags


def parse(*argv):
    return argparse.ArgumentParser(parents=[train_flags()]).parse_args(list(argv))


def test_yaml_keys_are_read_by_field_name_typed_and_flags_win(tmp_path):
    """learning-rate as text is a number, length_buckets is the old name of length_sort_window, a single path is
    a list; --epochs 2 on the command line wins over the file's 3; batch_size, in neither, keeps its default 16."""
    c = tmp_path / "c.yaml"
    c.write_text('train-data: a.jsonl\nlength_buckets: 4\nlearning-rate: "3e-4"\nepochs: 3\n')
    assert read_yaml(c) == {"train_data": ["a.jsonl"], "length_sort_window": 4, "learning_rate": 3e-4, "epochs": 3.0}
    cfg = config_from_args(parse("--config", str(c), "--epochs", "2"))
    assert (cfg.train_data, cfg.length_sort_window, cfg.learning_rate, cfg.epochs) == (["a.jsonl"], 4, 3e-4, 2.0)
    assert cfg.batch_size == 16


@pytest.mark.parametrize(
    "text, says",
    [
        ("lerning-rate: 1\n", r"c.yaml: unknown setting 'lerning-rate'. Fix: use one of .*learning-rate"),
        ("- a\n- b\n", r"c.yaml: expected a mapping of settings"),
        ("epochs: [1\n", r"c.yaml: not valid YAML \(.*\). Fix: write 'key: value' lines"),
        ("epochs: many\n", r"c.yaml: setting 'epochs': expected a number, got 'many'"),
    ],
)
def test_a_bad_config_file_is_named_with_the_fix(tmp_path, text, says):
    c = tmp_path / "c.yaml"
    c.write_text(text)
    with pytest.raises(SettingsError, match=says):
        read_yaml(c)


def test_a_missing_config_file_is_named(tmp_path):
    with pytest.raises(SettingsError, match=r"nope.yaml: no such config file. Fix: check the --config path"):
        read_yaml(tmp_path / "nope.yaml")
