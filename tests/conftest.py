import gzip
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / 'shared' / 'data' / 'mnist'
TINY = ['--unet_dim', '8', '--dim_mults', '1,2', '--train_timesteps', '20']


def idx_bytes(array, magic):
    header = magic.to_bytes(4, 'big') + b''.join(int(d).to_bytes(4, 'big') for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_dir(folder, n_train=120, n_test=30, gz=True, seed=0):
    """Synthetic MNIST-format files: blobs whose position encodes the label."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (('train', n_train), ('t10k', n_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 40, (n, 28, 28))
        for image, label in zip(images, labels):
            image[4 + 2 * label: 10 + 2 * label, 8:20] = 255
        for kind, array, magic in (('images-idx3', images, 0x803), ('labels-idx1', labels, 0x801)):
            data = idx_bytes(array, magic)
            name = f'{prefix}-{kind}-ubyte'
            if gz:
                (folder / f'{name}.gz').write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return folder


def load_script(name):
    """A script of scripts/ as a module (they are not a package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, ROOT / 'scripts' / f'{name}.py')
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def run_main(main, argv, capsys):
    """Run a script's main through run_cli; return (exit code, stdout, stderr)."""
    from ddpm_mnist.utils import run_cli
    code = 0
    try:
        run_cli(lambda: main(argv))
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def run_twice(main, argv, capsys):
    """Run a resumable script's main twice with the same argv, both successfully; return both stdouts."""
    outputs = []
    for _ in range(2):
        code, out, err = run_main(main, argv, capsys)
        assert code == 0, err
        outputs.append(out)
    return outputs


def assert_one_line_error(code, err, *fragments):
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.startswith('error:')]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope='session')
def idx_dir(tmp_path_factory):
    return write_idx_dir(tmp_path_factory.mktemp('idx'))


@pytest.fixture(scope='session')
def image_folder(tmp_path_factory, idx_dir):
    import get_mnist_data
    out = tmp_path_factory.mktemp('data') / 'mnist_image_folder'
    get_mnist_data.main(['--raw-dir', str(idx_dir), '--output', str(out)])
    return out


def train_argv(data, results, steps=4, every=2, extra=()):
    return ['--preset', 'small', *TINY, '--data_folder', str(data), '--results_folder', str(results),
            '--train_num_steps', str(steps), '--save_and_sample_every', str(every), '--train_batch_size', '16',
            '--num_samples', '4', '--sampling_timesteps', '3', '--num_workers', '0', '--no-compile', '--device', 'cpu',
            '--seed', '0', *extra]


@pytest.fixture(scope='session')
def trained_run(tmp_path_factory, image_folder):
    """A tiny real training run: 4 steps, milestones 1 and 2."""
    import train_ddpm_mnist
    results = tmp_path_factory.mktemp('results')
    train_ddpm_mnist.main(train_argv(image_folder, results))
    return results




@pytest.fixture
def offline(monkeypatch):
    """torchvision's MNIST download fails as it does on a machine without internet."""
    import torchvision.datasets

    class OfflineMNIST:
        def __init__(self, *args, **kwargs):
            raise RuntimeError('Error downloading t10k-images-idx3-ubyte.gz:\nName or service not known')
    monkeypatch.setattr(torchvision.datasets, 'MNIST', OfflineMNIST)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps one global state per process; each test may pick another precision."""
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
    yield


def sample_with(diffusion, strategy, steps=None, eta=0.0, **kwargs):
    """sampling.loop.sample with the sampler configuration resolved as the command line resolves it."""
    from ddpm_mnist.sampling.loop import sample
    from ddpm_mnist.sampling.registry import SamplerSettings
    settings = SamplerSettings.resolve(strategy, steps, eta, total_timesteps=diffusion.num_timesteps)
    return sample(diffusion, settings, **kwargs)
