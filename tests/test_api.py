"""The public API: the notebook example of docs/usage.md runs as written, and its functions keep their contract."""
import re

import pytest
import torch

import ddpm_mnist
from conftest import ROOT
from ddpm_mnist.utils import UserError


def usage_example():
    text = (ROOT / 'docs' / 'usage.md').read_text()
    section = text.split('## From Python (a notebook)', 1)[1]
    return re.search(r'```python\n(.*?)```', section, re.S).group(1)


def test_the_documented_notebook_example_runs(offline, tmp_path, monkeypatch, capsys):
    code = usage_example()
    assert len(code.strip().splitlines()) <= 10
    monkeypatch.chdir(tmp_path)  # its relative paths (runs/, ./data) land here
    exec(compile(code, 'docs/usage.md', 'exec'), {})
    assert (tmp_path / 'runs' / 'notebook' / 'ddim50.png').is_file()
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed.endswith('True') and '(16, 1, ' in printed


def test_load_model_from_a_run_folder_and_a_milestone(trained_run):
    latest = ddpm_mnist.load_model(trained_run, device='cpu', precision='fp32')
    first = ddpm_mnist.load_model(trained_run, milestone=1, device='cpu', precision='fp32')
    assert latest.path.name == 'model-2.pt' and first.path.name == 'model-1.pt'
    assert latest.config['model']['dim'] == 8 and latest.image_size == 32 and latest.timesteps == 20
    images = ddpm_mnist.sample(latest, strategy='ddim', steps=5, n=3, seed=1)
    assert images.shape == (3, 1, 32, 32) and images.min() >= 0 and images.max() <= 1
    again = ddpm_mnist.sample(latest, strategy='ddim', steps=5, n=3, seed=1, batch_size=1)
    assert torch.allclose(images, again, atol=1e-5)  # the same x_T per image, whatever the batch


@pytest.mark.parametrize('kwargs,message', [
    (dict(milestone=1), 'needs the run folder'),
    (dict(precision='fp8'), 'precision'),
])
def test_load_model_bad_arguments(kwargs, message):
    with pytest.raises(UserError, match=message):
        ddpm_mnist.load_model(**kwargs)


def test_load_model_missing_path(tmp_path):
    with pytest.raises(UserError, match='does not exist'):
        ddpm_mnist.load_model(tmp_path / 'nothing.pt')
    with pytest.raises(UserError, match='no model-N.pt'):
        ddpm_mnist.load_model(tmp_path)


def test_importing_the_package_loads_no_torch():
    import subprocess
    import sys
    code = 'import sys, ddpm_mnist, ddpm_mnist.settings; print("torch" in sys.modules)'
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == 'False'


def test_every_public_function_of_the_package_is_annotated():
    import ast
    from conftest import ROOT
    missing = []
    for path in sorted((ROOT / 'ddpm_mnist').glob('*.py')):
        def visit(body):
            for node in body:
                if isinstance(node, ast.ClassDef):
                    visit(node.body)
                elif isinstance(node, ast.FunctionDef) and (not node.name.startswith('_') or node.name.endswith('__')):
                    args = [*node.args.args, *node.args.kwonlyargs, node.args.vararg, node.args.kwarg]
                    bare = [a.arg for a in args if a is not None and a.arg not in ('self', 'cls', '_')
                            and a.annotation is None]
                    if bare or node.returns is None and node.name != '__init__':
                        missing.append(f'{path.name}:{node.lineno} {node.name}')
        visit(ast.parse(path.read_text()).body)
    assert not missing, missing


# ---------------------------------------------------------------- hostile arguments: typed, one line, before work

@pytest.fixture(scope='module')
def tiny(trained_run):
    return ddpm_mnist.load_model(trained_run, device='cpu', precision='fp32')


@pytest.mark.parametrize('kwargs, kind, fragment', [
    (dict(eta=2), ValueError, 'eta=2 is not allowed'),
    (dict(eta=float('nan')), ValueError, 'eta=nan'),
    (dict(seed=-1), ValueError, 'seed=-1'),
    (dict(seed=1.5), ValueError, 'seed=1.5'),
    (dict(n=2.5), ValueError, 'n=2.5'),
    (dict(n=0), ValueError, 'n=0'),
    (dict(n=True), ValueError, 'n=True'),
    (dict(steps=0), ValueError, 'steps=0'),
    (dict(steps=21), ValueError, 'T=20'),
    (dict(batch_size=0), ValueError, 'batch_size=0'),
    (dict(strategy='foo'), ValueError, 'ddpm, ddim'),
    (dict(guidance_scale=float('nan')), ValueError, 'guidance_scale=nan'),
    (dict(guidance_scale=1e39), ValueError, 'guidance_scale=1e+39'),
    (dict(digits=[11]), ValueError, 'digits=[11]'),
    (dict(digits=[]), ValueError, 'digits=[]'),
    (dict(digits=[3, 3]), ValueError, 'distinct'),
])
def test_sample_checks_every_argument_by_its_flags_rule(tiny, kwargs, kind, fragment):
    with pytest.raises(kind) as caught:
        ddpm_mnist.sample(tiny, **kwargs)
    assert isinstance(caught.value, UserError) and fragment in str(caught.value)
    assert '\n' not in str(caught.value) and '--' not in str(caught.value)  # the API's terms, not the flags'


def test_missing_and_bad_models_are_the_builtin_kind(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        ddpm_mnist.load_model(tmp_path / 'nothing.pt')
    with pytest.raises(ValueError, match='precision'):
        ddpm_mnist.load_model(precision='fp8')


@pytest.mark.parametrize('images, fragment', [
    (torch.full((8, 1, 28, 28), float('nan')), 'NaN or infinite'),
    (torch.rand(1, 1, 28, 28), 'at least 2'),
    (torch.rand(8, 28, 28), 'shape (8, 28, 28)'),
    (torch.rand(8, 3, 28, 28), 'shape (8, 3, 28, 28)'),
    ([[0.5]], 'list'),
])
def test_evaluate_refuses_what_it_cannot_score_at_once(images, fragment):
    import time
    started = time.perf_counter()
    with pytest.raises(ValueError) as caught:
        ddpm_mnist.evaluate(images)
    assert fragment in str(caught.value) and time.perf_counter() - started < 30  # no minutes in sqrtm


@pytest.mark.parametrize('images, fragment', [
    (torch.full((4, 1, 28, 28), float('nan')), 'NaN or infinite'),
    (torch.rand(28, 28), 'shape (28, 28)'),
    (torch.rand(0, 1, 28, 28), 'shape (0, 1, 28, 28)'),
    ('grid.png', 'str'),
])
def test_save_grid_refuses_what_is_not_a_batch_of_images(images, fragment, tmp_path):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        ddpm_mnist.save_grid(images, tmp_path / 'grid.png')
    assert not (tmp_path / 'grid.png').exists()


def test_evaluate_names_an_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; choose one of: mnist, fashion_mnist"):
        ddpm_mnist.evaluate(torch.rand(4, 1, 28, 28), dataset='imagenet')
