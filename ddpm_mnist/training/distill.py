"""Consistency distillation (Song et al. 2023, Algorithm 2) in the teacher's discrete DDIM time, as Latent
Consistency Models do (Luo et al. 2023): a student initialised from the teacher learns to map any point of the
teacher's probability-flow ODE straight to its end. The student is a GaussianDiffusion like any other (same Unet,
same checkpoint format); its config's `student` section says how to read it (the boundaries, the scalings), which
the 'consistency' sampler needs. A class-conditional student learns its teacher's guided ODE: the teacher steps with
eps_u + W (eps_c - eps_u) at the student's `guidance_scale` W, the student sees the same label without guidance, so
one network call per step draws guided digits.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from denoising_diffusion_pytorch import GaussianDiffusion
from ema_pytorch import EMA

from ddpm_mnist.utils import Diffusion
from ddpm_mnist.model.conditional import Guidance, LabelledBatch, balanced_labels
from ddpm_mnist.sampling.samplers import ddim_times

TIMESTEP_SCALING, SIGMA_DATA = 10.0, 0.5  # LCM's boundary scalings in DDPM's integer time


def scalings(t: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) at integer time t: f(x, t) = c_skip(t) x + c_out(t) x0_pred(x, t). At t = 0 c_skip = 1 and
    c_out = 0, so the student is exactly the identity at the smallest time (the consistency boundary condition)."""
    scaled = torch.as_tensor(t, dtype=torch.float64) * TIMESTEP_SCALING
    c_skip = SIGMA_DATA ** 2 / (scaled ** 2 + SIGMA_DATA ** 2)
    c_out = scaled / (scaled ** 2 + SIGMA_DATA ** 2).sqrt()
    return c_skip.float(), c_out.float()


def boundaries(total_timesteps: int, count: int) -> list[int]:
    """The times of the teacher's DDIM-`count` chain, descending from T-1, then 0, where the student is the
    identity (f(x, 0) = x): the anchor every consistency chain ends at. The student learns to join neighbours."""
    times = [t for t, _ in ddim_times(total_timesteps, count)]
    return times + [0] if times[-1] != 0 else times


def teacher_digest(config: dict[str, Any]) -> str | None:
    """The digest of the teacher a student learned from: its record (a student continued from its export names its
    teacher there), else the file its first segment started from (students made before that record)."""
    return config['student'].get('teacher_sha256_16') or (config.get('init_from') or {}).get('sha256_16')


def consistency(diffusion: Diffusion, unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor,
                clip: bool = False, labels: torch.Tensor | None = None) -> torch.Tensor:
    """f(x, t) = c_skip(t) x + c_out(t) x0(x, t), x0 read from the Unet's output by the model's objective; a
    conditional Unet gets `labels` (never dropped)."""
    out = unet(x, t) if labels is None else unet(x, t, labels, cond_drop_prob=0.)
    if diffusion.objective == 'pred_noise':
        x0 = diffusion.predict_start_from_noise(x, t, out)
    elif diffusion.objective == 'pred_x0':
        x0 = out
    else:
        x0 = diffusion.predict_start_from_v(x, t, out)
    if clip:
        x0 = x0.clamp(-1, 1)
    c_skip, c_out = (c.to(x.device)[:, None, None, None] for c in scalings(t))
    return c_skip * x + c_out * x0


def log_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """log(abar / (1 - abar)) = 2 lambda (Kingma et al. 2021), in float64: abar spans 1e-9 to 1 at T = 1000."""
    abar = alphas_cumprod.double()
    return (abar.log() - (-abar).log1p()).to(alphas_cumprod.dtype)


def pseudo_huber(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sqrt(|a - b|^2 + c^2) - c per image, c = 0.00054 sqrt(d) (Song & Dhariwal 2023, improved consistency
    training), averaged over the batch."""
    c = 0.00054 * math.sqrt(a[0].numel())
    return ((a - b).pow(2).flatten(1).sum(1) + c ** 2).sqrt().sub(c).mean()


class ConsistencyDistillation(GaussianDiffusion):
    """The student while it trains: forward(images) is the distillation loss, so the project's training step,
    Trainer, EMA and checkpoints run it unchanged; sample() draws its milestone grid with the consistency sampler.
    The teacher (frozen) and the target network (an EMA of the student, decay `target_decay`) are attributes, not
    submodules: neither is trained, saved nor averaged."""

    def __init__(self, *args: Any, student: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.student = student
        self.times = boundaries(self.num_timesteps, student['boundaries'])

    def setup_student(self, teacher: Diffusion, target_unet: torch.nn.Module) -> None:
        """The frozen teacher and the target network (`target_unet`: a fresh Unet of the student's shape, given its
        weights at the first step). Called once the Trainer exists, so that its EMA copy carries neither."""
        object.__setattr__(self, 'teacher', teacher.eval().requires_grad_(False))
        object.__setattr__(self, 'target', EMA(self.model, ema_model=target_unet.to(self.betas.device),
                                              beta=self.student['target_decay'], update_after_step=0,
                                              update_every=1))

    def forward(self, img: torch.Tensor | LabelledBatch, *args: Any, **kwargs: Any) -> torch.Tensor:
        """One distillation loss: x_t on the forward process at a random boundary t, one teacher step along its ODE
        (teacher_step) to the next boundary s, and the distance between the student at (x_t, t) and the target at (x_s, s); a
        conditional student, both at the batch's labels."""
        if not self.target.initted:  # the target starts as the student's weights (after --init_from or resume)
            self.target.copy_params_from_model_to_ema()
            self.target.initted.fill_(True)
        labels = img.labels if isinstance(img, LabelledBatch) else None
        x0 = self.normalize(img.images if labels is not None else img)
        n = len(x0)
        pick = torch.randint(0, len(self.times) - 1, (n,), device=x0.device)
        times = torch.tensor(self.times, device=x0.device)
        t, s = times[pick], times[pick + 1]  # adjacent boundaries, t > s
        x_t = self.q_sample(x0, t, torch.randn_like(x0))  # Ho et al. 2020, Eq. 4
        with torch.no_grad():
            x_s = self.teacher_step(x_t, t, s, labels)
            target = consistency(self, self.target.ema_model, x_s, s, labels=labels)
        online = consistency(self, self.model, x_t, t, labels=labels)
        return pseudo_huber(online, target) if self.student['loss'] == 'huber' else (online - target).pow(2).mean()

    def teacher_step(self, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                     labels: torch.Tensor | None = None) -> torch.Tensor:
        """The teacher's step along its ODE from t to s: DDIM with eta 0 (Song et al. 2021, Eq. 12; LCM's solver),
        its x0 clipped as in sampling; with `teacher_order` 2, corrected by the teacher's x0 at the step's end (one
        more call). A conditional teacher is guided at the student's scale W (Ho & Salimans 2022)."""
        if labels is not None:
            self.teacher.model.condition(labels, Guidance(self.student['guidance_scale'], False, 0.0))
        prediction = self.teacher.model_predictions(x_t, t, clip_x_start=True, rederive_pred_noise=True)
        alpha_s = self.alphas_cumprod[s][:, None, None, None]
        x_s = alpha_s.sqrt() * prediction.pred_x_start + (1 - alpha_s).sqrt() * prediction.pred_noise
        if self.student.get('teacher_order', 1) == 1:
            return x_s
        # DDIM is the first-order exponential integrator in lambda = log(sqrt(abar) / sqrt(1 - abar)) (Lu et al.
        # 2022, DPM-Solver++ Eq. 9): x_s = (sigma_s / sigma_t) x_t + alpha_s (1 - e^-h) x0_t, h = lambda_s - lambda_t.
        # Second order: x0 linear in lambda from x0_t to the teacher's x0 at that x_s (the trapezoid, Heun's method
        # in log-SNR; Song et al. 2023 distil with Heun); the weight of x0_s - x0_t is the integral of
        # e^-(lambda_s - lambda) (lambda - lambda_t) / h over [lambda_t, lambda_s] = (h - 1 + e^-h) / h
        h = (log_snr(alpha_s) - log_snr(self.alphas_cumprod[t][:, None, None, None])) / 2
        x0_s = self.teacher.model_predictions(x_s, s, clip_x_start=True, rederive_pred_noise=True).pred_x_start
        return x_s + alpha_s.sqrt() * (h + torch.expm1(-h)) / h * (x0_s - prediction.pred_x_start)

    @torch.inference_mode()
    def sample(self, batch_size: int = 16, **kwargs: Any) -> torch.Tensor:
        """The milestone grid: two-step consistency sampling (a conditional student: balanced digits, as it samples
        once exported)."""
        from denoising_diffusion_pytorch import GaussianDiffusion
        from ddpm_mnist.model.conditional import GuidedUnet
        from ddpm_mnist.sampling.loop import sample
        from ddpm_mnist.sampling.registry import SamplerSettings
        two_steps = SamplerSettings.resolve('consistency', 2, total_timesteps=self.num_timesteps)
        if self.student.get('guidance_scale') is None:
            return sample(self, two_steps, num_samples=batch_size, batch_size=batch_size)
        view = GaussianDiffusion(GuidedUnet(self.model), **self.settings).to(self.betas.device)
        view.student = self.student
        labels = balanced_labels(batch_size, range(self.model.classes_emb.num_embeddings))
        return sample(view, two_steps, num_samples=batch_size, batch_size=batch_size, labels=labels)


def student_diffusion(config: dict[str, Any]) -> ConsistencyDistillation:
    """The student as it trains: the config's Unet (initialised from the teacher by --init_from) in a
    ConsistencyDistillation; a conditional one is the library's conditional Unet itself (its weights keep the keys
    of the conditional models' checkpoints)."""
    from ddpm_mnist.model.network import build_unet, diffusion_settings
    unet = build_unet(config['model'])
    unet.self_condition = getattr(unet, 'self_condition', False)  # the conditional Unet has none; the library asks
    student = ConsistencyDistillation(unet, **diffusion_settings(config), student=config['student'])
    student.settings = diffusion_settings(config)
    return student


def attach_teacher(trainer: Any, config: dict[str, Any], device: str) -> None:
    """The frozen teacher (the file the student started from) and a target Unet, given to the student."""
    from ddpm_mnist.api import load_model
    from ddpm_mnist.model.network import build_unet
    teacher = load_model(config['student']['teacher'], device=device, precision='fp32').diffusion
    trainer.accelerator.unwrap_model(trainer.model).setup_student(teacher, build_unet(config['model']))
