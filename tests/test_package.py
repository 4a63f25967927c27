"""The project installs as a package: the wheel carries the shipped models, and `import ddpm_mnist` finds them
from any folder."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    source, out = tmp_path_factory.mktemp('source'), tmp_path_factory.mktemp('wheel')
    for name in ('pyproject.toml', 'README.md', 'LICENSE'):  # a copy: building writes build/ beside the sources
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / 'ddpm_mnist', source / 'ddpm_mnist', ignore=shutil.ignore_patterns('__pycache__'))
    built = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q',
                            '-w', str(out), str(source)], capture_output=True, text=True, cwd=out)
    if built.returncode != 0 and 'No module named' in built.stderr:
        pytest.skip(f'cannot build a wheel here: {built.stderr.strip().splitlines()[-1]}')
    assert built.returncode == 0, built.stderr
    return next(out.glob('ddpm_mnist-*.whl'))


def test_wheel_carries_the_shipped_models(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for stem in ('ddpm_mnist_small', 'ddpm_mnist_conditional', 'mnist_classifier', 'mnist_test_features_28px'):
        assert f'ddpm_mnist/pretrained/{stem}.safetensors' in names
        assert f'ddpm_mnist/pretrained/{stem}.json' in names
    assert not any(name.startswith(('tests/', 'scripts/', 'runs/')) for name in names)
    for package in ('model', 'training', 'sampling', 'evaluation', 'cli'):  # every sub-package travels too
        assert f'ddpm_mnist/{package}/__init__.py' in names, package


def test_installed_package_loads_the_shipped_model_from_any_folder(wheel, tmp_path):
    site = tmp_path / 'site'
    subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '-q', '--target', str(site), str(wheel)],
                   check=True, capture_output=True)
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    code = ('import ddpm_mnist; m = ddpm_mnist.load_model(precision="fp32"); '
            'print(ddpm_mnist.__file__); print(m.path); print(m.image_size)')
    done = subprocess.run([sys.executable, '-c', code], cwd=elsewhere, capture_output=True, text=True,
                          env={'PYTHONPATH': str(site), 'PATH': '/usr/bin:/bin', 'HOME': str(tmp_path)})
    assert done.returncode == 0, done.stderr
    module, model, size = done.stdout.split()
    assert module.startswith(str(site)) and model.startswith(str(site))  # the installed copy, not the checkout
    assert size == '28'
