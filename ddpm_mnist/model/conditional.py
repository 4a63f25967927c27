"""Class-conditional generation with classifier-free guidance (Ho & Salimans 2022), on the library's own
conditional Unet (denoising_diffusion_pytorch.classifier_free_guidance.Unet: a label embedding, and a learned null
label that training swaps in with probability cond_drop_prob).

Training uses the library's conditional GaussianDiffusion (its loss takes the labels); sampling wraps the Unet in
GuidedUnet, which every sampler of the registry calls like an unconditional Unet: the conditional and unconditional
halves go through one batched Unet call, and their outputs are combined as eps_u + W (eps_c - eps_u).
"""
from __future__ import annotations

from collections import namedtuple
from typing import Any, Sequence

import torch
from denoising_diffusion_pytorch import classifier_free_guidance as library_cfg
from torch import nn

NUM_DIGITS = 10
Guidance = namedtuple('Guidance', 'scale remove_parallel rescaled_phi')
UNGUIDED = Guidance(scale=1.0, remove_parallel=False, rescaled_phi=0.0)


class LowestAttentionConditionalUnet(library_cfg.Unet):
    """The library's conditional Unet with the linear attention of the outer levels left out (as
    model.LowestAttentionUnet does for the unconditional one): attention at the lowest level and in the middle only.
    Same state-dict keys, less those layers' weights."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for level in (*self.downs[:-1], *self.ups[1:]):
            level[2] = nn.Identity()  # the library applies it as x = attn(x), a Residual


def build_conditional_unet(model_cfg: dict[str, Any]) -> library_cfg.Unet:
    """The library's conditional Unet (or its lowest-attention subclass) for a config's model section."""
    unet_class = LowestAttentionConditionalUnet if model_cfg.get('attention') == 'lowest' else library_cfg.Unet
    return unet_class(dim=model_cfg['dim'], dim_mults=tuple(model_cfg['dim_mults']), channels=model_cfg['channels'],
                      num_classes=model_cfg['num_classes'], cond_drop_prob=model_cfg.get('cond_drop_prob', 0.1))


class GuidedUnet(nn.Module):
    """A conditional Unet seen as an unconditional one, for the samplers: condition(labels, guidance) before each
    batch, then forward(x, t) returns the guided model output; condition(None) makes it the unconditional model
    (its null label), which is what editing uses. W = 1 is the conditional model alone; W = 0 the
    unconditional one. The library's own guidance (parallel-component removal, rescaling) is available through
    Guidance, off by default."""

    def __init__(self, unet: library_cfg.Unet) -> None:
        super().__init__()
        self.unet = unet
        self.channels, self.self_condition, self.out_dim = unet.channels, False, unet.out_dim
        self.num_classes = unet.classes_emb.num_embeddings  # ten digits for MNIST; a dataset's classes otherwise
        self.random_or_learned_sinusoidal_cond = False
        self.labels, self.guidance = None, UNGUIDED

    def condition(self, labels: torch.Tensor | None, guidance: Guidance = UNGUIDED) -> None:
        self.labels, self.guidance = labels, guidance

    def forward(self, x: torch.Tensor, time: torch.Tensor, x_self_cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.labels is None:  # unconditioned (editing, by default): the null label the model also learned
            any_label = torch.zeros(len(x), dtype=torch.long, device=x.device)
            return self.unet(x, time, any_label, cond_keep_mask=torch.zeros(len(x), dtype=torch.bool))
        if len(self.labels) != len(x):
            raise RuntimeError('GuidedUnet.condition(labels) must be called for every batch before sampling')
        labels = self.labels.to(x.device)
        if self.guidance.scale == 1:
            return self.unet(x, time, labels, cond_drop_prob=0.)
        keep = torch.cat([torch.ones_like(labels, dtype=torch.bool), torch.zeros_like(labels, dtype=torch.bool)])
        both = self.unet(torch.cat([x, x]), torch.cat([time, time]), torch.cat([labels, labels]), cond_keep_mask=keep)
        conditional, unconditional = both.chunk(2)
        return guided(conditional, unconditional, self.guidance)


def guided(conditional: torch.Tensor, unconditional: torch.Tensor, guidance: Guidance) -> torch.Tensor:
    """eps_u + W (eps_c - eps_u) (Ho & Salimans 2022, Eq. 6 with w = W - 1), or the library's variant: the part of
    (eps_c - eps_u) parallel to eps_c removed, and the result rescaled to eps_c's spread (rescaled_phi)."""
    update = conditional - unconditional
    if guidance.remove_parallel:
        parallel, orthogonal = library_cfg.project(update, conditional)
        update = orthogonal
    out = conditional + (guidance.scale - 1) * update
    if guidance.rescaled_phi:
        dims = tuple(range(1, out.ndim))
        rescaled = out * conditional.std(dim=dims, keepdim=True) / out.std(dim=dims, keepdim=True)
        out = guidance.rescaled_phi * rescaled + (1 - guidance.rescaled_phi) * out
    return out


def is_conditional(model_cfg: dict[str, Any]) -> bool:
    """Whether a config's model section is a class-conditional Unet."""
    return bool(model_cfg.get('num_classes'))


def balanced_labels(n: int, digits: Sequence[int] = tuple(range(NUM_DIGITS))) -> torch.Tensor:
    """n labels cycling through `digits` in blocks (all of the first digit, then the next): a grid with
    n / len(digits) columns shows one digit per row."""
    digits = list(digits)
    per_digit = -(-n // len(digits))
    return torch.tensor(digits).repeat_interleave(per_digit)[:n]


class LabelledBatch:
    """Images with their labels, moved together by .to(device) as the library's training loop moves a batch."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def to(self, device: str | torch.device) -> LabelledBatch:
        return LabelledBatch(self.images.to(device), self.labels.to(device))

    def __len__(self) -> int:
        return len(self.images)


class LabelledDiffusion(library_cfg.GaussianDiffusion):
    """The library's conditional GaussianDiffusion, trained by the library's Trainer loop: its forward takes a
    LabelledBatch (the loop calls model(data)); sample(batch_size) (the loop's milestone grids) draws balanced digits
    with W = 1 through our DDIM, which avoids the library's cond_scale == 1 unpacking error."""

    sampling_steps = 50

    def forward(self, batch: LabelledBatch | torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if isinstance(batch, LabelledBatch):
            return super().forward(batch.images, classes=batch.labels, **kwargs)
        return super().forward(batch, *args, **kwargs)

    @torch.inference_mode()
    def sample(self, batch_size: int = 16, **kwargs: Any) -> torch.Tensor:
        from ddpm_mnist.model.network import sampling_view
        from ddpm_mnist.sampling.loop import sample
        from ddpm_mnist.sampling.registry import SamplerSettings
        view = sampling_view(self)
        ddim = SamplerSettings.resolve('ddim', min(self.sampling_steps, self.num_timesteps),
                                       total_timesteps=self.num_timesteps)
        return sample(view, ddim, num_samples=batch_size, batch_size=batch_size,
                      labels=balanced_labels(batch_size, range(self.model.classes_emb.num_embeddings)))
