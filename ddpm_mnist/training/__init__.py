"""Training: the one training step, the loop that runs it, the run folder and the training command."""
