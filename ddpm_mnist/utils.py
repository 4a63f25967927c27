"""Small helpers every module uses: the type aliases the signatures share, one-line user errors, atomic writes,
strict JSON, digests. Imports no torch at the top: the command lines load it before parsing their flags."""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Union

PathLike = Union[str, os.PathLike]  # a file or folder the caller names
Config = dict[str, Any]  # a run's settings: sections model, diffusion, training, data (config.json)
StateDict = dict[str, Any]  # parameter name -> torch.Tensor
Checkpoint = dict[str, Any]  # what model-N.pt holds (step, model, ema, opt, ...), or {'unet': StateDict}

if TYPE_CHECKING:  # names for type checkers only: importing them would make the command-line modules load torch
    from denoising_diffusion_pytorch import GaussianDiffusion as Diffusion  # the library's, or a sampling view of it
    from denoising_diffusion_pytorch.denoising_diffusion_pytorch import ModelPrediction  # (pred_noise, pred_x_start)
else:
    Diffusion = ModelPrediction = Any


class UserError(Exception):
    """A problem with the user's input or files, reported as one line without a traceback. Its subclasses are also
    the built-in kind, so `except ValueError` or `except FileNotFoundError` catches them in a notebook."""


class BadValue(UserError, ValueError):
    """An argument or flag value outside what its rule allows."""


class MissingFile(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""


def run_cli(main: Callable[[], Any]) -> None:
    """Call main(); turn a UserError into a one-line message and exit status 2."""
    try:
        main()
    except UserError as err:
        print(f'error: {err}', file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        sys.exit(130)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id is running (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphans(paths: Iterable[Path], remove: Callable[[Path], Any]) -> None:
    """Remove temporaries named '...-PID' whose writing process is gone (killed mid-write)."""
    for path in paths:
        pid = path.name.rsplit('-', 1)[-1]
        if pid.isdigit() and (int(pid) == os.getpid() or not pid_alive(int(pid))):
            remove(path)


# What this project's writers leave behind when killed: atomic_path's '.NAME.tmp-PID' files and the data
# step's '.NAME.partial-PID' / '.NAME.old-PID' folders.
TEMPORARY_PATTERNS = ('.*.tmp-*', '.*.partial-*', '.*.old-*')


def remove_stale_temporaries(folder: PathLike) -> None:
    """Delete the temporaries of killed runs in `folder` (never those of a running process)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for pattern in TEMPORARY_PATTERNS:
        remove_orphans(folder.glob(pattern), lambda p: shutil.rmtree(p, ignore_errors=True) if p.is_dir()
                       else p.unlink(missing_ok=True))


def warn(message: str) -> None:
    """One WARNING line on stderr."""
    print(f'WARNING: {message}', file=sys.stderr)


@contextmanager
def atomic_path(path: PathLike, *, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; on success rename it over `path`, on failure delete it. A full disk
    (however the writer reports it) becomes DiskFull, one line naming the file, what it needed and what is free."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    try:
        yield tmp
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except Exception as err:  # torch.save, safetensors and PIL each report a full disk their own way
        if is_disk_full(err):
            raise DiskFull(disk_full_message(path, needed)) from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


class DiskFull(UserError):
    """No space left where a file was being written; the temporary is gone, earlier files are untouched."""


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC or a quota from the OS, or a writer's own report of a short write (torch.save: 'unexpected pos')."""
    if isinstance(err, OSError) and err.errno is not None:
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(err)
    return 'No space left' in text or 'unexpected pos' in text or 'file write failed' in text


def disk_full_message(path: PathLike, needed: int | None = None) -> str:
    """'could not write PATH: No space left on device (X MB free in FOLDER, about Y MB needed)'."""
    folder = next((p for p in Path(path).resolve().parents if p.exists()), Path('/'))
    free = shutil.disk_usage(folder).free
    need = f', about {megabytes(needed)} needed' if needed else ''
    return f'could not write {path}: No space left on device ({megabytes(free)} free in {folder}{need})'


def megabytes(size: float) -> str:
    return f'{size / 1e6:.1f} MB'


def tensor_bytes(value: Any) -> int:
    """Bytes of the tensors inside a (nested) checkpoint dict: about what torch.save writes."""
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return value.numel() * value.element_size() if hasattr(value, 'element_size') else 0


def strict(data: Any) -> Any:
    """`data` with every NaN or infinite float as None, so the JSON written is strict (JSON.parse, jq read it)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: strict(v) for k, v in data.items()}
    return [strict(v) for v in data] if isinstance(data, (list, tuple)) else data


def write_json(path: PathLike, data: Any) -> None:
    """Strict JSON (not-measured values as null), indented, written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(strict(data), indent=2, allow_nan=False) + '\n')


def read_json(path: PathLike) -> Any:
    """A JSON file, or a one-line error naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f'cannot read {path}: {err}') from None


class FolderLock:
    """An exclusive lock on an output folder (a training run's, a sweep's, an edit's), so two runs never write the
    same files: the second is refused in one line naming the first one's pid.

    flock is released by the kernel when the process dies, so a crashed or killed run never leaves the
    folder locked; the PID inside the file is only there to name the holder in the error message.
    """

    def __init__(self, folder: PathLike, what: str = 'training', flag: str = '--results_folder') -> None:
        self.path = Path(folder) / '.lock'
        self.what, self.flag = what, flag
        self.handle = None

    def __enter__(self) -> FolderLock:
        self.handle = open(self.path, 'a+')
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or 'another process'
            self.handle.close()
            raise UserError(f'{self.path.parent} is in use by a running {self.what} process (pid {holder}); wait for '
                            f'it to finish or use another {self.flag}') from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(str(os.getpid()))
        self.handle.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


def ensure_writable_dir(path: PathLike) -> Path:
    """Create `path` if needed and prove we can write into it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f'.write-test-{os.getpid()}'
        probe.write_bytes(b'')
        probe.unlink()
    except OSError as err:
        raise UserError(f'cannot write to folder {path}: {err.strerror or err}; choose another folder') from None
    return path


def shown_path(path: PathLike) -> str:
    """A path as written into records: relative to the working folder when inside it, else just its name
    (a record should not carry the absolute paths of the machine that wrote it)."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return path.name


def file_digest(path: PathLike) -> str:
    """First 16 hex digits of the file's SHA-256."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()[:16]
