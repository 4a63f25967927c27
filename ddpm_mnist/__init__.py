"""DDPM and DDIM on MNIST: train with denoising-diffusion-pytorch, sample with any sampler, score offline.

    import ddpm_mnist
    model = ddpm_mnist.load_model()
    images = ddpm_mnist.sample(model, strategy='ddim', steps=50, n=16)

The public API (load_model, sample, save_grid, evaluate, Model) is imported on first use, so the command-line
scripts' --help stays free of torch.
"""
from __future__ import annotations

__all__ = ['Model', 'evaluate', 'load_model', 'sample', 'save_grid']


def __getattr__(name: str) -> object:
    if name in __all__:
        from ddpm_mnist import api
        return getattr(api, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
