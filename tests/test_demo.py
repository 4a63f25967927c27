"""The Quick start's demo on a machine with no MNIST on disk and no internet: its commands must finish and show
the comparison, scored against the test-split statistics shipped beside the classifier."""
import json
import re
import shlex

import pytest

import inference_comparison
from conftest import ROOT, run_main


def demo_commands():
    """The inference_comparison.py command lines of demo.sh, with the data-folder flags ("${raw[@]}") dropped,
    as the demo runs them where ../shared is missing."""
    lines = [line for line in (ROOT / 'demo.sh').read_text().splitlines()
             if line.startswith('python inference_comparison.py')]
    return [[arg for arg in shlex.split(line)[2:] if arg != '${raw[@]}'] for line in lines]


def test_demo_finishes_offline_with_no_mnist(offline, tmp_path, capsys):
    commands = demo_commands()
    assert len(commands) == 3 and '--quick' in commands[-1]
    small = ['--num_samples', '4', '--batch_size', '4', '--results_folder', str(tmp_path),
             '--data_root', str(tmp_path / 'no-mnist-here')]
    for argv in commands:
        code, out, err = run_main(inference_comparison.main, argv + small, capsys)
        assert code == 0, err
    table = (tmp_path / 'inference_pretrained' / 'quick_comparison' / 'comparison.md').read_text()
    warnings = [line for line in err.splitlines() if line.startswith('WARNING')]
    assert len(warnings) == 1 and 'MNIST not found' in warnings[0] and 'To get MNIST' in warnings[0], err
    assert 'DDIM 10, eta 0.0' in table and 'UniPC(2) 10' in table and 'DPM-Solver++(2M) 10' in table
    assert '*pure noise (ceiling)*' in table
    header = [cell.strip() for cell in next(line for line in table.splitlines() if line.startswith('| config'))
              .split('|')]
    row = next(line for line in table.splitlines() if line.startswith('| DDIM 10, eta 0.0'))
    cells = dict(zip(header, (cell.strip() for cell in row.split('|'))))
    fid, low, high = (float(x) for x in re.match(r'([\d.]+) \[([\d.]+), ([\d.]+)\]', cells['FID [95 %]']).groups())
    assert low <= fid <= high and float(cells['IS [95 %]'].split()[0]) > 1  # an FID with its interval, and an IS
    # clean output: no literal nan; columns empty for the whole run (no DDPM row, no digits on disk) left out
    assert not re.search(r'\bnan\b', table, re.IGNORECASE) and 'vs DDPM-1000' not in header
    assert 'precision' not in header and 'near-copies' not in header
    for path in tmp_path.rglob('*.json'):  # strict JSON: not-measured values are null, never a bare NaN
        json.loads(path.read_text(), parse_constant=lambda token: pytest.fail(f'{path} holds {token}'))
    assert '**DDIM 10, eta 0.0 against DDIM 50, eta 0.0**' in table and 'What these numbers can show' in table
    assert (tmp_path / 'inference_pretrained' / 'ddpm' / 'ddpm_steps1000.png').is_file()


def test_shipped_statistics_reproduce_the_reference_fid(tmp_path):
    """FID against the shipped statistics equals FID against the digits themselves."""
    from ddpm_mnist.datasets import read_raw_split
    from ddpm_mnist.evaluation.metrics import Evaluator
    from ddpm_mnist.evaluation.reference import load_reference_stats
    full = ROOT.parent / 'shared' / 'data' / 'mnist-full'
    if not full.is_dir():
        pytest.skip('needs ../shared/data/mnist-full')
    reference, _ = read_raw_split(full, 'test')
    train, _ = read_raw_split(full, 'train')
    stats = load_reference_stats()
    assert stats is not None and stats.count == len(reference)
    with_digits = Evaluator(reference, train[:2000])
    offline = Evaluator(stats=stats)
    images = with_digits.floor_images(300)
    assert abs(with_digits.score(images)['fid'] - offline.score(images)['fid']) < 1e-6
