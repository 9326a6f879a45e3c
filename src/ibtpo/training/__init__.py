"""Training: padded batches, sequence log-probs, the RL trainer and the supervised warm-up."""
