"""What both benchmarks measure the same way: the GEMM peak a step is compared with, and phase timers."""
import time
from collections import defaultdict

import torch


def synchronize(device):
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()


def gemm_peak(device='cpu', dtype=torch.float32, n=2048, repeats=8):
    """Measured matmul GFLOP/s of n x n matrices on `device` in `dtype`: the ceiling a step is compared with."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(2):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9


class StepTimer:
    """Wall time per phase of a training step, summed over steps."""

    PHASES = ('data', 'forward', 'backward', 'optimiser', 'ema')

    def __init__(self):
        self.seconds, self.steps, self.last = defaultdict(float), 0, None

    def start(self):
        self.last = time.perf_counter()

    def mark(self, phase):
        now = time.perf_counter()
        self.seconds[phase] += now - self.last
        self.last = now

    def per_step(self):
        out = {phase: self.seconds[phase] / max(self.steps, 1) for phase in self.PHASES}
        out['total'] = sum(out.values())
        return out
