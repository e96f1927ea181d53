"""Training: TrainConfig (settings), run.train (the story of a run, top to bottom), loop (the optimizer steps),
checkpoints, signals and trackers."""
