"""The machine a command runs on and how long runs report on it: which device, how to wait for it, what the CPU can
do and its name for reports; a progress bar that says what runs (plain lines in a log, none with --quiet), and
measurements that survive a kill (each saved as it is made, so a rerun resumes). Imports no torch at the top: the
command lines load it before parsing their flags."""
from __future__ import annotations

import ctypes
import json
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ddpm_mnist.utils import PathLike, UserError, atomic_path, write_json

if TYPE_CHECKING:
    import torch


QUIET = False  # --quiet: no progress bars; every command line sets it when it parses its flags


def set_quiet(quiet: bool) -> None:
    global QUIET
    QUIET = quiet


class LogLines:
    """Where a progress bar writes when stderr is not a terminal (a log, CI): each update as one plain line."""

    def write(self, text: str) -> None:
        line = text.replace('\r', '').strip()
        if line:
            print(line, file=sys.stderr, flush=True)

    def flush(self) -> None:
        sys.stderr.flush()


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = '', unit: str = 'it',
             leave: bool = True, initial: int = 0, disable: bool = False) -> Any:
    """A progress bar saying what runs: tqdm's on a terminal; in a log one plain line every 30 s at most (no
    carriage returns); nothing with --quiet."""
    from tqdm.auto import tqdm
    terminal = sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, initial=initial, disable=QUIET or disable,
                mininterval=0.5 if terminal else 30, file=None if terminal else LogLines(), dynamic_ncols=terminal)


class SavedMeasurements:
    """Measurements of a long benchmark, each saved to PATH (JSON) as soon as it is made; a rerun with the same
    `setup` (model digest, N, seed...) reuses them, so an interrupted run resumes where it stopped."""

    def __init__(self, path: PathLike, setup: dict[str, Any], *, log: Callable[[str], None] = print) -> None:
        self.path, self.setup, self.log = Path(path), setup, log
        self.done = self.earlier()

    def earlier(self) -> dict[str, Any]:
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError):  # none yet, or cut short while written by something else
            return {}
        same = isinstance(saved, dict) and all(saved.get(k) == v for k, v in self.setup.items())
        return dict(saved.get('measured') or {}) if same else {}

    def get(self, key: str, measure: Callable[[], Any]) -> Any:
        """The measurement named `key`: from an earlier run of the same setup, or made now and saved."""
        if key in self.done:
            self.log(f'{key}: from the earlier run in {self.path}')
        else:
            self.done[key] = measure()
            self.log(f'{key}: {self.done[key]}')
            write_json(self.path, self.record())
        return self.done[key]

    def record(self, **extra: Any) -> dict[str, Any]:
        """The setup, `extra` and every measurement so far, as written to PATH."""
        return dict(self.setup, **extra, measured=self.done)


class BatchCache:
    """Finished batches of one long computation (e.g. RePaint's 10,000 Unet calls per image), one .npy file per
    batch in FOLDER, so an interrupted run resumes batch by batch. Name FOLDER after everything the result depends
    on (model digest, inputs, settings): a batch found there is taken as done."""

    def __init__(self, folder: PathLike) -> None:
        self.folder = Path(folder)
        self.computed = 0  # items put by this process, so a resumed run can time only what it computed itself

    def path(self, start: int) -> Path:
        return self.folder / f'batch-{start:07d}.npy'

    def get(self, start: int, *, size: int) -> Any:
        """The saved result of the batch of `size` items beginning at item `start` (a torch tensor), or None, also
        when the saved batch holds another number of items (the short last batch of a smaller run)."""
        import numpy as np
        import torch
        path = self.path(start)
        if not path.is_file():
            return None
        batch = torch.from_numpy(np.load(path, allow_pickle=False))
        return batch if len(batch) == size else None

    def put(self, start: int, result: Any) -> None:
        import numpy as np
        self.folder.mkdir(parents=True, exist_ok=True)
        array = result.detach().cpu().numpy()
        with atomic_path(self.path(start), needed=array.nbytes) as tmp, open(tmp, 'wb') as f:
            np.save(f, array, allow_pickle=False)
        self.computed += len(array)


# ---------------------------------------------------------------- the device

def pick_device(name: str = 'auto') -> torch.device:
    """'auto' -> CUDA, else MPS, else the CPU; a named device must exist here (one-line error otherwise)."""
    import torch
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
    import torch
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
    import torch
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
