"""`--report-to`: the training curves sent to experiment trackers (TensorBoard, Weights & Biases, Trackio, MLflow,
...) through Accelerate's own trackers: `Accelerator(log_with=..., project_dir=...)`, `init_trackers`, `log`,
`end_training`. Nothing here writes an event file itself.

A tracker whose package is missing is an error when the setting is read (Accelerate would drop it silently and the
run would log nothing); `all` means every tracker whose package is installed. Local trackers write under
`<output_dir>/logs` (TensorBoard: `<output_dir>/logs/rankrm/`), which a saved model keeps (not a model file)."""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

from rankrm.errors import SettingsError

log = logging.getLogger(__name__)

PROJECT = "rankrm"  # the project name trackers file the runs under (TensorBoard: the logs subdirectory)
# the trackers Accelerate knows, with the pip package each needs
PACKAGES = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "trackio": "trackio",
    "mlflow": "mlflow",
    "comet_ml": "comet-ml",
    "aim": "aim",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "swanlab": "swanlab",
}


def log_dir(output_dir) -> Path:
    """Where local trackers write."""
    return Path(output_dir) / "logs"


def _installed() -> set[str]:
    from accelerate.tracking import get_available_trackers

    return {str(t) for t in get_available_trackers()}


def tracker_names(report_to: str) -> list[str]:
    """The trackers a --report-to value asks for: 'none', 'all' (every installed one) or a comma list; unknown and
    uninstalled names raise a SettingsError naming the flag and the fix."""
    asked = [n.strip().lower().replace("-", "_") for n in str(report_to).split(",") if n.strip()]
    if not asked or asked == ["none"]:
        return []
    if "all" in asked:
        installed = [n for n in PACKAGES if n in _installed()]
        if not installed:
            raise SettingsError(
                "--report-to all: no tracker package is installed. Fix: pip install tensorboard (or "
                "wandb, trackio, mlflow), or leave --report-to at none"
            )
        return installed
    unknown = [n for n in asked if n not in PACKAGES]
    if unknown:
        raise SettingsError(
            f"--report-to {unknown[0]!r} unknown. Fix: use none, all, or a comma list of {', '.join(PACKAGES)}"
        )
    missing = [n for n in asked if n not in _installed()]
    if missing:
        raise SettingsError(
            f"--report-to {missing[0]}: the {PACKAGES[missing[0]]} package is not installed. Fix: pip "
            f"install {PACKAGES[missing[0]]}, or leave {missing[0]} out of --report-to"
        )
    return list(dict.fromkeys(asked))


def accelerator_kwargs(report_to: str, output_dir) -> dict:
    """Accelerator(...) settings for the trackers (none: nothing)."""
    names = tracker_names(report_to)
    return {"log_with": names, "project_dir": str(log_dir(output_dir))} if names else {}


def scalars(prefix: str, metrics: dict) -> dict[str, float]:
    """The finite real-valued metrics, flattened to 'prefix/name' (nested: 'prefix/calibration/ece'); counts,
    lists, missing values and NaN are left out."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(scalars(f"{prefix}/{k}", v))
        elif isinstance(v, float) and math.isfinite(v):
            out[f"{prefix}/{k}"] = v
    return out


def flat_config(config: dict) -> dict:
    """Settings as trackers store hyperparameters: numbers, strings and booleans (lists joined by commas)."""
    return {
        k: ",".join(map(str, v)) if isinstance(v, (list, tuple)) else ("" if v is None else v)
        for k, v in config.items()
    }


def start_trackers(accelerator, output_dir, config: dict) -> None:
    """Start the run in every tracker the Accelerator was built with (main process; no-op without trackers)."""
    names = [str(t) for t in accelerator.log_with]
    if not names:
        return
    logs = log_dir(output_dir)
    if accelerator.is_main_process:
        logs.mkdir(parents=True, exist_ok=True)
    error = None
    try:  # on the main process (Accelerate starts the trackers there only)
        accelerator.init_trackers(
            PROJECT,
            config=flat_config(config),
            init_kwargs={"wandb": {"dir": str(logs)}, "mlflow": {"logging_dir": str(logs)}},
        )
    except Exception as e:  # a tracker's own error (not logged in, an unreachable server, an unwritable directory)
        for t in accelerator.trackers:  # close those that started; one that did not may fail to: its error is below
            with contextlib.suppress(Exception):
                t.finish()
        accelerator.trackers.clear()
        error = (
            f"--report-to {','.join(names)}: a tracker did not start ({type(e).__name__}: {e}). Fix: set it up "
            f"(wandb login, MLFLOW_TRACKING_URI, a writable {logs}) or leave it out of --report-to"
        )
    if accelerator.num_processes > 1:  # every process stops alike: none waits for a main process that has left
        from accelerate.utils import broadcast_object_list

        error = broadcast_object_list([error])[0]
    if error:
        raise SettingsError(error)
    log.info(f"reporting to {', '.join(names)}; local logs in {logs} (tensorboard --logdir {logs})")


def end_trackers(accelerator) -> None:
    """Flush and close the trackers (Accelerate's end_training); also on errors and signals. Without trackers it
    does nothing (end_training also ends the process group, which a library caller may still use). Every process
    calls it alike: the trackers live on the main process, the process group on all."""
    if accelerator.log_with:
        accelerator.end_training()
