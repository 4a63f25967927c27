"""The library's two attention layers with the same maths, laid out for channels_last inputs.

The library rearranges q, k, v to (batch, heads, dim, pixels), which for a channels_last activation is a
full copy of each, then lets einsum copy them again. Here the 1x1-conv output, (batch, pixels, 3 * heads *
dim) in memory, is split by views; the per-head products take those views as strided matrices (fp32 BLAS
reads them in place; the bf16 kernels still copy them), full attention uses PyTorch's fused
scaled_dot_product_attention, and the result comes back already channels_last.
Same parameters, same state dict. Inference swaps both in (sampling.prepare_for_inference); training only the
linear one (fast_training.apply_levers; see use_fast_attention).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from denoising_diffusion_pytorch.denoising_diffusion_pytorch import Attention, LinearAttention


def split_qkv(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(b, 3*c, x, y) -> q, k, v as (b, x*y, c) views (no copy when qkv is channels_last)."""
    b, c3, x, y = qkv.shape
    return qkv.permute(0, 2, 3, 1).reshape(b, x * y, 3, c3 // 3).unbind(dim=2)


def to_image(out: torch.Tensor, x: int, y: int) -> torch.Tensor:
    """(b, x*y, c) -> (b, c, x, y), channels_last."""
    return out.reshape(out.shape[0], x, y, -1).permute(0, 3, 1, 2)


def with_memory(mem: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Prepend the learned memory (m, c) to t (b, n, c) along the pixel axis."""
    return torch.cat((mem.to(t.dtype).expand(t.shape[0], -1, -1), t), dim=1)


class FastLinearAttention(LinearAttention):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        q, k, v = split_qkv(self.to_qkv(self.norm(x)))
        mk, mv = (m.flatten(0, 1).t() for m in self.mem_kv)  # (heads, dim, m) -> (m, heads * dim)
        k, v = with_memory(mk, k), with_memory(mv, v)
        q = q.unflatten(-1, (self.heads, -1)).softmax(dim=-1).flatten(2) * self.scale
        heads = zip(*(t.chunk(self.heads, dim=-1) for t in (q, k.softmax(dim=1), v)))
        out = torch.cat([qh @ (kh.transpose(1, 2) @ vh) for qh, kh, vh in heads], dim=-1)
        return self.to_out(to_image(out, h, w))


class FastAttention(Attention):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        q, k, v = split_qkv(self.to_qkv(self.norm(x)))
        mk, mv = (m.transpose(0, 1).flatten(1) for m in self.mem_kv)  # (heads, m, dim) -> (m, heads * dim)
        k, v = with_memory(mk, k), with_memory(mv, v)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(to_image(out.transpose(1, 2).flatten(2), h, w))


def use_fast_attention(unet: torch.nn.Module, *, full: bool = True) -> torch.nn.Module:
    """Swap every library attention layer in `unet` for its layout-aware twin, in place. full=False keeps the
    library's full attention, as training does: compiled, its einsum maths trains faster than the fused kernel,
    whose backward is slow on a CPU for MNIST's 64-pixel sequences (benchmarks/bench_training.py)."""
    for module in unet.modules():
        if type(module) is LinearAttention:
            module.__class__ = FastLinearAttention
        elif full and type(module) is Attention and not module.attend.flash and module.attend.dropout == 0:
            module.__class__ = FastAttention
    return unet
