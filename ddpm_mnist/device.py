"""The machine: which device to use, how to wait for it, what the CPU can do, and its name for reports."""
from __future__ import annotations

import ctypes
import platform
from pathlib import Path

import torch

from ddpm_mnist.utils import UserError


def pick_device(name: str = 'auto') -> torch.device:
    """'auto' -> CUDA, else MPS, else the CPU; a named device must exist here (one-line error otherwise)."""
    if name == 'auto':
        if torch.cuda.is_available():
            return torch.device('cuda')
        if getattr(torch.backends, 'mps', None) and torch.backends.mps.is_available():
            return torch.device('mps')
        return torch.device('cpu')
    available = {'cpu': True, 'cuda': torch.cuda.is_available(),
                 'mps': bool(getattr(torch.backends, 'mps', None) and torch.backends.mps.is_available())}
    if not available.get(name.split(':')[0], False):
        raise UserError(f'--device {name} is not available on this machine; use --device auto or cpu')
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a timer measures it."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    elif device.type == 'mps':
        torch.mps.synchronize()


def keep_freed_memory() -> bool:
    """Let glibc reuse freed activation buffers instead of returning them to the OS and page-faulting them
    back in at every Unet op (glibc mmaps large tensors by default; docs/speed.md has the measurement).
    Process-wide, so only the command-line scripts call it; a no-op off glibc."""
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0) and libc.mallopt(m_trim_threshold, 1 << 30))


def cpu_has_bf16() -> bool:
    """Whether the CPU has native bf16 instructions (AVX512-BF16 or AMX)."""
    try:
        flags = open('/proc/cpuinfo').read()
    except OSError:
        return False
    return 'avx512_bf16' in flags or 'amx_bf16' in flags


def machine_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model with its bf16 instruction sets and torch's thread count."""
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    try:
        cpuinfo = Path('/proc/cpuinfo').read_text()
    except OSError:
        cpuinfo = ''
    cpu = next((line.split(':', 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith('model name')),
               platform.processor() or platform.machine())
    extras = [flag for flag in ('avx512_bf16', 'amx_bf16') if flag in cpuinfo]
    return f'{cpu}{" (" + ", ".join(extras) + ")" if extras else ""}, {torch.get_num_threads()} threads'
