"""What the training loss sees, and nothing sampling uses: the per-timestep loss weight, and the levers that change
the loss's inputs, targets or noise levels (input perturbation, stable targets, EDM's log-normal noise levels), put
together by training_diffusion."""
from __future__ import annotations

from typing import Any

import torch
from denoising_diffusion_pytorch.denoising_diffusion_pytorch import extract
from torch import nn

from ddpm_mnist.utils import UserError


def set_loss_weight(diffusion: nn.Module, diffusion_cfg: dict[str, Any]) -> None:
    """The per-timestep loss weight, written as the weight w on the x0 error that the library's buffer implies for
    each objective (|v - v'|^2 = (snr + 1) |x0 - x0'|^2, |eps - eps'|^2 = snr |x0 - x0'|^2). The library's w is
    min(snr, gamma) (min-SNR, Hang et al. 2023) or snr: it vanishes as snr -> 0, so the high-noise predictions that
    steer the deterministic sampler are barely trained. snr_floor f raises it to max(w, f): Salimans & Ho (2022,
    section 4) "truncated SNR" weighting is f = 1."""
    floor = diffusion_cfg.get('snr_floor')
    if floor is None or not hasattr(diffusion, 'loss_weight'):
        return
    alphas_cumprod = diffusion.alphas_cumprod.double()
    snr = alphas_cumprod / (1 - alphas_cumprod)
    gamma = diffusion_cfg.get('min_snr_gamma')
    x0_weight = (snr if gamma is None else snr.clamp(max=gamma)).clamp(min=floor)
    per_objective = {'pred_noise': x0_weight / snr, 'pred_x0': x0_weight, 'pred_v': x0_weight / (snr + 1)}
    diffusion.loss_weight.copy_(per_objective[diffusion.objective].float())


class InputPerturbation:
    """DDPM-IP (Ning et al. 2023, "Input Perturbation Reduces Exposure Bias in Diffusion Models", Eq. 8): the
    network is trained on y_t = sqrt(a_t) x0 + sqrt(1 - a_t) (eps + gamma xi), xi ~ N(0, I), against the target of
    the unperturbed eps, so it learns to correct inputs that drifted off q(x_t) -- what a sampler's own earlier
    errors produce, and what the deterministic sampler, unlike the stochastic one, never washes out. Only the
    training loss changes (the perturbation lives inside p_losses); sampling and q_sample elsewhere are as before."""

    input_perturbation = 0.0
    perturbing = False

    def p_losses(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.perturbing = True
        try:
            return super().p_losses(*args, **kwargs)
        finally:
            self.perturbing = False

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if self.perturbing:  # the library's p_losses always passes the noise its target is computed from
            noise = noise + self.input_perturbation * torch.randn_like(noise)
        return super().q_sample(x_start, t, noise)


class StableTargets:
    """Stable Target Field (Xu et al. 2023, "Stable Target Field for Reduced Variance Score Estimation in Diffusion
    Models", Eq. 5-6): the x0 in the regression target is replaced by its posterior mean given x_t over a reference
    batch that holds the true x0 and `reference_size` other training images,
        x0_hat = sum_k w_k x0_k,  w_k = softmax_k(-|x_t - sqrt(a_t) x0_k|^2 / (2 (1 - a_t))),
    and the noise by the one that x_t and x0_hat imply. At low noise w is one-hot on the true x0 (the usual target);
    at high noise the target is a weighted mean of many digits instead of one random digit, so the network learns the
    average it must predict from far less noisy targets -- the prediction the deterministic sampler follows from x_T
    without fresh noise to average its errors out. The inputs x_t are unchanged. pred_v only (the shipped objective):
    the library computes that target through predict_v, which is where the field enters."""

    reference_images: torch.Tensor | None = None  # uint8 (N, C, H, W): the training images (the trainer sets them)
    reference_size = 0
    stabilising, noised = False, None

    def p_losses(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.stabilising = True
        try:
            return super().p_losses(*args, **kwargs)
        finally:
            self.stabilising, self.noised = False, None

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        x_t = super().q_sample(x_start, t, noise)
        if self.stabilising:  # the library's p_losses noises once, then asks predict_v for the target
            self.noised = x_t
        return x_t

    def predict_v(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if not self.stabilising:
            return super().predict_v(x_start, t, noise)
        x_t = self.noised
        x0 = self.posterior_mean(x_t, t, x_start)
        eps = (x_t - extract(self.sqrt_alphas_cumprod, t, x_t.shape) * x0) / extract(
            self.sqrt_one_minus_alphas_cumprod, t, x_t.shape)  # x_t = sqrt(a) x0 + sqrt(1 - a) eps, solved for eps
        return super().predict_v(x0, t, eps)

    @torch.no_grad()
    def posterior_mean(self, x_t: torch.Tensor, t: torch.Tensor, x_start: torch.Tensor) -> torch.Tensor:
        """x0_hat for each x_t: the softmax-weighted mean over (the batch's x0, reference_size random training
        images), in fp32 whatever the autocast (at low noise the logits are in the thousands)."""
        if self.reference_images is None:
            raise RuntimeError('StableTargets.reference_images must hold the training images before training')
        index = torch.randint(len(self.reference_images), (self.reference_size,))
        extra = self.normalize(self.reference_images[index].to(x_t.device).float() / 255)
        with torch.autocast(x_t.device.type, enabled=False):
            ref = torch.cat([x_start.float(), extra]).flatten(1)  # (B + n, D); the batch's own x0 first
            a = self.sqrt_alphas_cumprod[t].float()[:, None]
            variance = 1 - self.alphas_cumprod[t].float()[:, None]
            # -|x_t - a x0_k|^2 / 2 var, without the |x_t|^2 that every k shares
            logits = (2 * a * (x_t.float().flatten(1) @ ref.T) - a ** 2 * (ref * ref).sum(1)) / (2 * variance)
            x0 = logits.softmax(dim=1) @ ref
        return x0.view(x_start.shape).to(x_start.dtype)


class LogNormalNoise:
    """EDM's training noise levels (Karras et al. 2022, Table 1, "Noise distribution": ln sigma ~ N(P_mean, P_std^2),
    the paper's -1.2 and 1.2) on the library's discrete chain: sigma is drawn, then the first timestep whose
    sigma_t = sqrt((1 - a_t) / a_t) reaches it, instead of a uniform timestep. Most of the training then sits at the
    middle noise levels where the digit is decided, rather than at the ends of the cosine schedule; with pred_v and
    no min-SNR weight (--min_snr_gamma 1e9) the loss weight on the x0 error is (1 + sigma^2) / sigma^2, EDM's
    lambda(sigma) for sigma_data = 1. Karras et al. report that with their training the deterministic sampler no
    longer gains from added noise on CIFAR-10 (section 5)."""

    noise_levels = (-1.2, 1.2)

    def random_times(self, batch_size: int) -> torch.Tensor:
        mean, std = self.noise_levels
        log_sigma = mean + std * torch.randn(batch_size, device=self.device)
        # ln sigma_t, increasing in t
        log_sigmas = 0.5 * (torch.log1p(-self.alphas_cumprod) - torch.log(self.alphas_cumprod)).float()
        return torch.searchsorted(log_sigmas, log_sigma).clamp(max=self.num_timesteps - 1).long()


def check_loss_levers(config: dict[str, Any]) -> None:
    """The loss levers a config combines must fit together (a one-line error otherwise)."""
    d = config['diffusion']
    if d.get('stable_targets') and (d['objective'] != 'pred_v' or config['model'].get('num_classes')
                                    or d.get('input_perturbation')):
        raise UserError('--stable_targets works with an unconditional pred_v model without --input_perturbation '
                        '(the target it stabilises is the library\'s v); drop it or the other setting')


def training_diffusion(base: type, diffusion_cfg: dict[str, Any], unet: nn.Module, **settings: Any) -> nn.Module:
    """`base` (the library's GaussianDiffusion or LabelledDiffusion) with the loss levers diffusion_cfg names: the
    same state dict, another loss."""
    gamma, reference = diffusion_cfg.get('input_perturbation'), diffusion_cfg.get('stable_targets')
    noise_levels = diffusion_cfg.get('noise_levels')
    levers = [lever for lever, on in ((InputPerturbation, gamma), (StableTargets, reference),
                                      (LogNormalNoise, noise_levels)) if on]
    cls = type(f'{"".join(lever.__name__ for lever in levers)}{base.__name__}', (*levers, base), {}) if levers else base
    diffusion = cls(unet, **settings)
    if gamma:
        diffusion.input_perturbation = gamma
    if reference:
        diffusion.reference_size = reference
    if noise_levels:
        diffusion.noise_levels = tuple(noise_levels)
    set_loss_weight(diffusion, diffusion_cfg)
    return diffusion
