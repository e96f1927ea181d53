"""Calibration users can carry: the temperature fitted on held-out comparisons, folded into the saved weights, so
that sigmoid(r_w - r_l) of the saved model is itself the calibrated probability (`rankrm normalize --calibrate`).

Dividing every reward by T is a gain of 1/T, folded in exactly as normalize.py folds a gain (the head's weight, and
its bias or config.reward_bias): every loader, server and plain transformers then reads calibrated rewards. A mean
of 0 on demonstrations stays 0."""

from __future__ import annotations

import numpy as np

from rankrm.errors import DataError
from rankrm.evaluation.evaluate import EvalResult
from rankrm.evaluation.metrics import fit_temperature, reliability, stated_margins
from rankrm.modeling.normalize import set_normalization


def calibrate(model, res: EvalResult) -> dict:
    """Fit the temperature on res (the model's evaluation on held-out comparisons) and divide every reward by it.

    Returns what rankrm.json records: the temperature, where it went, and the expected calibration error on those
    comparisons before and after (the same bins as `rankrm eval`)."""
    d, w = stated_margins(res.rewards, res.labels)
    if not len(d) or not np.any(d):
        raise DataError(
            "--calibrate",
            None,
            None,
            "no comparison with a reward margin to fit a temperature on",
            "give --calibrate ranked data the model separates (its held-out data, e.g. the heldout.jsonl that "
            "`rankrm train` writes)",
        )
    t = fit_temperature(d, w)
    where = set_normalization(model, 0.0, 1.0 / t)
    return {
        "temperature": t,
        "offset_in": where,
        "pairs": int(w.sum()),
        "ece_before": reliability(d, w)[1],
        "ece_after": reliability(d / t, w)[1],
    }
