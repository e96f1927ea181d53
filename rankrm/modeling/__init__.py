"""The reward model: a Hugging Face backbone with a scalar head, the batches it reads, and what is done to it
after training (normalization). batch_rewards in model.py is the one path from a batch to rewards."""
