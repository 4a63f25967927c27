"""Shared logic behind the three DDPM/DDIM-on-MNIST scripts."""
