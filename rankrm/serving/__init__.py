"""The reward model in use: `rankrm score` over files, `rankrm serve` over HTTP (app: endpoints; engine: the queue
and the model thread; schema: request shapes), and RL-library reward functions (client)."""
