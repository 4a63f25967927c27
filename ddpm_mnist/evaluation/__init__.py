"""Evaluation: the feature classifier, the metrics and their intervals, the sweep and the training curve."""
