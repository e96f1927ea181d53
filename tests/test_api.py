"""The public Python API, called the way users call it: `import rankrm` alone is enough."""

import importlib
import pkgutil
import subprocess
import sys

import rankrm
from conftest import synthetic_groups, write_jsonl


def test_functions_stay_functions_after_every_submodule_is_imported():
    """rankrm.train, rankrm.evaluate and rankrm.normalize share their names with submodules; importing those (or any
    submodule) must not replace the functions."""
    for m in pkgutil.iter_modules(rankrm.__path__):
        if m.name != "__main__":  # that one runs the command
            importlib.import_module(f"rankrm.{m.name}")
    for sub in ("train", "evaluate", "normalize"):
        exec(f"import rankrm.{sub}", {})  # as a user's `import rankrm.train` does
    for name in ("train", "evaluate", "normalize", "read_groups", "split_by_prompt", "kwise_loss", "group_stats"):
        assert callable(getattr(rankrm, name)) and not isinstance(getattr(rankrm, name), type(rankrm)), name
    for name in rankrm.__all__:
        assert hasattr(rankrm, name), name


def test_train_then_evaluate_from_import_rankrm_alone(model_dirs, tmp_path):
    """In a fresh interpreter: import rankrm, rankrm.train; train from a TrainConfig; evaluate the saved model."""
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_groups(24, 3))
    code = f"""
import rankrm, rankrm.train
res = rankrm.train(rankrm.TrainConfig(model={str(model_dirs['llama-chat'])!r}, train_data=[{str(data)!r}],
                                      eval_fraction=0.25, max_steps=2, batch_size=4, max_length=64,
                                      output_dir={str(tmp_path / 'run')!r}))
again = rankrm.train(rankrm.TrainConfig(model={str(model_dirs['llama-chat'])!r}, train_data=[{str(data)!r}],
                                        eval_fraction=0.25, max_steps=2, batch_size=4, max_length=64,
                                        output_dir={str(tmp_path / 'run2')!r}))
groups = rankrm.read_groups({str(data)!r})
result = rankrm.evaluate({str(tmp_path / 'run')!r}, groups)
assert abs(result.metrics["accuracy"] - res["after"]["accuracy"]) < 1.0
print(res["after"]["pairs"], again["after"]["accuracy"] == res["after"]["accuracy"], result.metrics["pairs"])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    held, same, all_pairs = out.stdout.split()[-3:]
    assert same == "True"  # the second call trains again (same seed: same result), it is not a module
    assert int(all_pairs) == 24 * 6 and 0 < int(held) < int(all_pairs)

