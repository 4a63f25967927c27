"""Type aliases the package's signatures share (torch-free, so the command-line modules can use them too)."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Union

PathLike = Union[str, os.PathLike]  # a file or folder the caller names
Config = dict[str, Any]  # a run's settings: sections model, diffusion, training, data (config.json)
StateDict = dict[str, Any]  # parameter name -> torch.Tensor
Checkpoint = dict[str, Any]  # what model-N.pt holds (step, model, ema, opt, ...), or {'unet': StateDict}

if TYPE_CHECKING:  # names for type checkers only: importing them would make the command-line modules load torch
    from denoising_diffusion_pytorch import GaussianDiffusion as Diffusion  # the library's, or a sampling view of it
    from denoising_diffusion_pytorch.denoising_diffusion_pytorch import ModelPrediction  # (pred_noise, pred_x_start)
else:
    Diffusion = ModelPrediction = Any
