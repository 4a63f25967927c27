import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input or files, reported as one line without a traceback."""


def run_cli(main):
    """Call main(); turn a UserError into a one-line message and exit status 2."""
    try:
        main()
    except UserError as err:
        print(f'error: {err}', file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        sys.exit(130)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphans(paths, remove):
    """Remove temporaries named '...-PID' whose writing process is gone (killed mid-write)."""
    for path in paths:
        pid = path.name.rsplit('-', 1)[-1]
        if pid.isdigit() and (int(pid) == os.getpid() or not pid_alive(int(pid))):
            remove(path)


def warn(message):
    print(f'WARNING: {message}', file=sys.stderr)


@contextmanager
def atomic_path(path):
    """Yield a temporary sibling of `path`; on success rename it over `path`, on failure delete it."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    try:
        yield tmp
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path, data):
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + '\n')


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f'cannot read {path}: {err}') from None


def ensure_writable_dir(path):
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
