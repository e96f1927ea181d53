"""How good a reward model is: the field's metrics as pure functions, evaluation with bootstrap intervals, plots."""
