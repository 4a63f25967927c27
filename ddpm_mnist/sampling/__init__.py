"""Sampling: the sampler registry (torch-free), the samplers, the sampling loop and editing."""
