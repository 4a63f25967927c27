"""The training step: one function, `training_step`, that the command line's Trainer, benchmarks/bench_training.py
and any later trainer run; the learning-rate schedule it follows; and the speed levers it can be built with (one
switch each), the cached data and the Adam choice."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch
from denoising_diffusion_pytorch import Unet
from PIL import UnidentifiedImageError
from torch.func import functional_call

from ddpm_mnist.model.network import use_fast_attention
from ddpm_mnist.model.conditional import LabelledBatch
from ddpm_mnist.runtime import progress
from ddpm_mnist.utils import Diffusion, UserError

# The step as the Trainer ran it before any lever (benchmarks/bench_training.py's 'baseline' row).
BASELINE = dict(data='png', keep_freed_memory=False, precision='autocast', channels_last=False,
                fast_linear_attention=False, fast_full_attention=False, adam='for-loop', ema_foreach=False,
                compile=False)

# What the Trainer uses (fast path). Each lever keeps the maths; docs/speed.md has the measurements.
DEFAULT_LEVERS = dict(
    data='cached',               # every training image decoded once into memory, batches drawn from there
    keep_freed_memory=True,      # glibc keeps freed memory instead of returning it to the OS at every step
    precision='autocast',        # accelerate's bf16 autocast ('bf16': the Unet computes in bf16 itself)
    channels_last=True,          # NHWC activations: the layout oneDNN's convolutions want
    fast_linear_attention=True,  # the layout-aware twin of the library's linear attention (ddpm_mnist.model.network)
    fast_full_attention=False,   # the library's own full attention: compiled, it trains faster than the fused twin
    adam='fused',                # PyTorch's fused Adam kernel
    ema_foreach=True,            # ema-pytorch's foreach update
    compile=True,                # torch.compile of the Unet (the Trainer: on for CPU training, --compile)
)


class Bf16ComputeUnet(Unet):
    """A Unet whose forward runs in bf16 from its fp32 master weights: the weights are cast once per forward,
    inside autograd, so gradients land on the fp32 parameters that the optimiser, EMA and checkpoints keep
    (same state dict). Unlike autocast, activations stay bf16 between ops instead of being cast back and forth.
    The time MLP stays fp32 (the timestep needs more than bf16's 8 bits), as in sampling's Bf16Unet."""

    def forward(self, x: torch.Tensor, time: torch.Tensor, x_self_cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.inside_bf16_call:
            return super().forward(x, time, x_self_cond)
        weights = {name: p if name.startswith('time_mlp') else p.to(torch.bfloat16)
                   for name, p in self.named_parameters()}
        handle = self.time_mlp.register_forward_hook(lambda module, args, out: out.to(torch.bfloat16))
        self.inside_bf16_call = True
        try:
            x_self_cond = None if x_self_cond is None else x_self_cond.to(torch.bfloat16)
            out = functional_call(self, weights, (x.to(torch.bfloat16), time, x_self_cond))
        finally:
            self.inside_bf16_call = False
            handle.remove()
        return out.float()


def use_bf16_compute(unet: Unet) -> Unet:
    """Turn a library Unet into a Bf16ComputeUnet in place (same parameters and state dict)."""
    unet.__class__, unet.inside_bf16_call = Bf16ComputeUnet, False
    return unet


def apply_levers(diffusion: Diffusion, levers: dict[str, Any]) -> Diffusion:
    """Switch the model-side levers on, in place: attention twins, channels_last, bf16 compute, compile."""
    if levers['fast_linear_attention']:
        use_fast_attention(diffusion.model, full=levers['fast_full_attention'])
    if levers['channels_last']:
        diffusion.model.to(memory_format=torch.channels_last)
    if levers['precision'] == 'bf16':
        use_bf16_compute(diffusion.model)
    if levers['compile']:
        diffusion.model.compile()  # in place: the state dict keeps its keys; the first steps take ~1 min longer
    return diffusion


def make_adam(params: Iterable[torch.nn.Parameter], kind: str, **kwargs: Any) -> torch.optim.Adam:
    """The library's Adam, with PyTorch's for-loop, foreach or fused implementation."""
    flags = dict(fused=kind == 'fused', foreach=kind == 'foreach') if kind != 'for-loop' else dict(foreach=False)
    return torch.optim.Adam(params, **flags, **kwargs)


# ---------------------------------------------------------------- the step

def learning_rate(step: int, *, base: float, warmup_steps: int = 0, schedule: str = 'constant',
                  total_steps: int = 1) -> float:
    """Learning rate of optimiser step `step` (0-based): linear warm-up from 0 over warmup_steps, then constant or a
    cosine decay to 0 at total_steps (the library's Trainer has no schedule)."""
    factor = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    if schedule == 'cosine':
        progress = min(1.0, max(0, step - warmup_steps) / max(1, total_steps - warmup_steps))
        factor *= 0.5 * (1 + math.cos(math.pi * progress))
    return base * factor


def no_mark(phase: str) -> None:
    """A step's phase marks go nowhere unless a benchmark times them."""


@dataclass
class StepParts:
    """What one optimiser step touches: the diffusion (as accelerate prepared it), its optimiser and accelerator, the
    EMA copies to update (main process only), the schedule and the library Trainer's clipping and accumulation."""
    model: Diffusion
    optimiser: torch.optim.Optimizer
    accelerator: Any  # accelerate.Accelerator: autocast, backward, clipping
    learning_rate: Callable[[int], float]
    emas: tuple = ()  # ema_pytorch EMA / PostHocEMA: each gets update() after the optimiser step
    gradient_accumulate_every: int = 1
    max_grad_norm: float = 1.0


def training_step(parts: StepParts, batches: Iterator[Any], step: int, mark: Callable[[str], None] = no_mark) -> float:
    """Optimiser step `step` (0-based) as the library's Trainer.train runs it: for each accumulated batch the loss
    under the precision's autocast, divided by the accumulation, and its backward; then gradients clipped to norm 1,
    Adam at this step's learning rate, zero_grad, and the EMA updates. Returns the loss (summed over the
    accumulation). `mark(phase)` is called after data, forward, backward, optimiser and ema (benchmarks time them)."""
    accelerator, device = parts.accelerator, parts.accelerator.device
    for group in parts.optimiser.param_groups:
        group['lr'] = parts.learning_rate(step)
    parts.model.train()
    total = 0.0
    for _ in range(parts.gradient_accumulate_every):
        batch = next(batches).to(device)
        mark('data')
        with accelerator.autocast():
            loss = parts.model(batch) / parts.gradient_accumulate_every
        total += loss.item()
        mark('forward')
        accelerator.backward(loss)
        mark('backward')
    accelerator.wait_for_everyone()
    accelerator.clip_grad_norm_(parts.model.parameters(), parts.max_grad_norm)
    parts.optimiser.step()
    parts.optimiser.zero_grad()
    accelerator.wait_for_everyone()
    mark('optimiser')
    for ema in parts.emas:
        ema.update()
    mark('ema')
    return total


# ---------------------------------------------------------------- data

class CachedImages:
    """Batches from the training images held in memory (decode_all: the library's own transform, once, as uint8),
    drawn without replacement epoch after epoch like a shuffled DataLoader. The library's transform without flips
    is deterministic, so the batches hold exactly the tensors its Dataset would give."""

    def __init__(self, images: torch.Tensor, batch_size: int, *, generator: torch.Generator | None = None,
                 device: str | torch.device = 'cpu', memory_format: torch.memory_format | None = None,
                 labels: torch.Tensor | None = None) -> None:
        self.images = images.to(device)  # uint8 (N, C, H, W), from decode_all
        self.labels = None if labels is None else labels.to(device)  # a conditional model's digits, same order
        self.batch_size, self.generator = batch_size, generator
        self.memory_format = memory_format or torch.contiguous_format
        self.order, self.position = None, 0

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> CachedImages:
        return self

    def __next__(self) -> torch.Tensor | LabelledBatch:
        if self.order is None or self.position + self.batch_size > len(self.order):
            self.order = torch.randperm(len(self.images), generator=self.generator).to(self.images.device)
            self.position = 0
        index = self.order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        images = self.images[index].float().div_(255).contiguous(memory_format=self.memory_format)
        return images if self.labels is None else LabelledBatch(images, self.labels[index])


def decode_all(dataset: torch.utils.data.Dataset) -> torch.Tensor:
    """Every image of the library's Dataset as one uint8 tensor (N, C, H, W). An unreadable file stops here,
    before training starts, with its name."""
    out = None
    for i in progress(range(len(dataset)), desc='decoding training images', unit='img', leave=False):
        try:
            image = dataset[i]
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise UserError(f'training image {dataset.paths[i]} cannot be read ({err}); delete or replace it, '
                            'or rebuild the folder with get_mnist_data.py --force') from None
        if out is None:
            out = torch.empty((len(dataset), *image.shape), dtype=torch.uint8)
        out[i] = (image * 255).round().to(torch.uint8)
    return out
