import csv
import json

import numpy as np
import pytest
import torch

import inference_comparison
from conftest import SHARED_MNIST, assert_one_line_error, run_main
from ddpm_mnist.evaluation import metrics
from ddpm_mnist.sampling import loop as sampling
from ddpm_mnist.evaluation import sweep
from ddpm_mnist.evaluation.classifier import as_training_resolution, classify, load_classifier
from ddpm_mnist.evaluation.sweep_tables import COLUMNS
from ddpm_mnist.datasets import read_raw_split


@pytest.fixture(scope='module')
def digits():
    """600 real test digits: the metric checks need real MNIST, not the synthetic blobs."""
    if not SHARED_MNIST.is_dir():
        pytest.skip(f'{SHARED_MNIST} not present')
    images, labels = read_raw_split(SHARED_MNIST, 'test')
    return images[:600], labels[:600]


@pytest.fixture(scope='module')
def classifier():
    return load_classifier()


def features(classifier, images):
    return classify(classifier, as_training_resolution(images))[0]


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise(digits, classifier):
    images = as_training_resolution(digits[0])
    base, _ = classify(classifier, images)
    assert abs(metrics.frechet_distance(base, base)) < 1e-6
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(images.shape, generator=generator)
    fids = [metrics.frechet_distance(classify(classifier, (images + level * noise).clamp(0, 1))[0], base)
            for level in (0.05, 0.2, 0.5, 1.0)]
    assert all(a < b for a, b in zip(fids, fids[1:])), fids
    assert fids[0] > 0


def test_one_class_set_has_is_one_and_no_balance(digits, classifier):
    images, labels = digits
    one_class = as_training_resolution(images[labels == labels[0]])
    _, probs = classify(classifier, one_class)
    assert metrics.inception_score(probs) < 1.3
    share, smallest, kl = metrics.class_balance(probs)
    assert smallest == 0 and kl > 1.5
    _, all_probs = classify(classifier, as_training_resolution(images))
    assert metrics.inception_score(all_probs) > 5 and metrics.class_balance(all_probs)[2] < 0.2


def test_precision_recall_of_a_set_with_itself_is_one(digits, classifier):
    f = features(classifier, digits[0])
    precision, recall = metrics.precision_recall(f, f)
    assert precision == pytest.approx(1.0) and recall == pytest.approx(1.0)
    collapsed = np.repeat(f[:1], len(f), axis=0)
    assert metrics.precision_recall(f, collapsed)[1] < 0.1  # mode collapse kills recall


@pytest.mark.parametrize('size', [28, 32])
def test_memorisation_flags_copies_only(digits, size):
    images, _ = digits
    train = as_training_resolution(images[:300], size)
    train_pixels = metrics.to_classifier_input(train).flatten(1).numpy()
    _, copies = metrics.memorisation(train[:50], train_pixels)
    _, fresh = metrics.memorisation(as_training_resolution(images[300:350], size), train_pixels)
    assert copies == 1.0 and fresh < 0.1


def test_calibration_orders_floor_below_ceiling(digits, classifier):
    images, _ = digits
    evaluator = metrics.Evaluator(images[:300], images[300:], classifier=classifier)
    cal = evaluator.calibration(100)
    floor, ceiling = cal['real training digits (floor)'], cal['pure noise (ceiling)']
    assert floor['n'] == ceiling['n'] == 100
    assert floor['fid'] * 10 < ceiling['fid'] and floor['inception_score'] > ceiling['inception_score']
    assert floor['fid'] < cal['mirrored real digits']['fid'] < ceiling['fid']


def test_flip_preference_separates_real_from_mirrored_digits(digits, classifier):
    images, _ = digits
    evaluator = metrics.Evaluator(images[:100], images[100:200], classifier=classifier)
    real = as_training_resolution(images[200:600])
    assert evaluator.score(real)['flip_preferred_share'] < 0.25
    assert evaluator.score(real.flip(-1))['flip_preferred_share'] > 0.75


def test_tiny_sweep_writes_every_output(trained_run, idx_dir, monkeypatch, capsys):
    seen = []
    real = sampling.run_batch
    monkeypatch.setattr(sampling, 'run_batch', lambda d, sampler, x_T, *a: seen.append(
        (type(sampler).__name__.lower(), len(sampler.timesteps), x_T.clone())) or real(d, sampler, x_T, *a))

    def argv(steps):
        return ['--checkpoint', str(trained_run / 'model-2.pt'), '--compare', '--compare_steps', steps,
                '--compare_samplers', 'ddpm,ddim', '--compare_etas', '0,1', '--num_samples', '8', '--batch_size', '8', '--raw-dir', str(idx_dir),
                '--results_folder', str(trained_run), '--device', 'cpu']

    code, out, _ = run_main(inference_comparison.main, argv('2,5'), capsys)
    assert code == 0, out
    folder = next(trained_run.glob('inference_model-2_*')) / 'comparison'
    for name in ('comparison.json', 'comparison.csv', 'comparison.md', 'comparison.png'):
        assert (folder / name).stat().st_size > 0
    result = json.loads((folder / 'comparison.json').read_text())
    assert [r['config'] for r in result['rows']] == ['DDPM 20', 'DDIM 2, eta 0.0', 'DDIM 2, eta 1.0',
                                                     'DDIM 5, eta 0.0', 'DDIM 5, eta 1.0']
    assert sorted(p.name for p in (folder / 'grids').iterdir()) == sorted(
        ['ddpm_steps20.png', 'ddim_steps2_eta0.0.png', 'ddim_steps2_eta1.0.png', 'ddim_steps5_eta0.0.png',
         'ddim_steps5_eta1.0.png'])
    with open(folder / 'comparison.csv') as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == COLUMNS and len(rows) == 8  # 5 configs + floor, mirrored, ceiling
    assert {'real training digits (floor)', 'mirrored real digits', 'pure noise (ceiling)'} <= {
        r['config'] for r in rows}
    # paired noise: every config, DDIM eta=0 at S=2 and S=5 included, starts from the same x_T
    starts = {(s, k): x for s, k, x in seen}
    assert torch.equal(starts[('ddim', 2)], starts[('ddim', 5)]) and torch.equal(starts[('ddpm', 20)],
                                                                                  starts[('ddim', 2)])
    # a rerun with one more config only samples the new one
    seen.clear()
    code, _, _ = run_main(inference_comparison.main, argv('2,5,7'), capsys)
    assert code == 0 and {(s, k) for s, k, _ in seen} == {('ddim', 7)}
    assert len(json.loads((folder / 'comparison.json').read_text())['rows']) == 7
    # results scored by an older version of the metrics are not reused
    seen.clear()
    monkeypatch.setattr(sweep, 'METRICS_VERSION', sweep.METRICS_VERSION + 1)
    code, _, _ = run_main(inference_comparison.main, argv('2'), capsys)
    assert code == 0 and {(s, k) for s, k, _ in seen} == {('ddpm', 20), ('ddim', 2)}


def test_sweep_leaves_out_ddim_that_is_ddpm():
    from ddpm_mnist.evaluation.sweep import sweep_configs
    labels = [c.label for c in sweep_configs(('ddpm', 'ddim'), steps=(10, 20), etas=(0.0, 1.0),
                                                     solver_steps=(5,), total_timesteps=20)]
    assert labels == ['DDPM 20', 'DDIM 10, eta 0.0', 'DDIM 10, eta 1.0', 'DDIM 20, eta 0.0']
    # without the DDPM row there is nothing it would repeat
    assert 'DDIM 20, eta 1.0' in [c.label for c in sweep_configs(('ddim',), steps=(20,), etas=(1.0,),
                                                                          solver_steps=(5,), total_timesteps=20)]


def test_sweep_runs_the_new_samplers_at_their_own_steps():
    from ddpm_mnist.evaluation.sweep import sweep_configs
    labels = [c.label for c in sweep_configs(('ddim', 'dpmpp_2m', 'unipc'), steps=(10,), etas=(0.0,),
                                                     solver_steps=(5, 10), total_timesteps=20)]
    assert labels == ['DDIM 10, eta 0.0', 'DPM-Solver++(2M) 5', 'DPM-Solver++(2M) 10', 'UniPC(2) 5', 'UniPC(2) 10']


def test_missing_inception_weights_is_a_clear_error(trained_run, tmp_path, capsys):
    argv = ['--checkpoint', str(trained_run / 'model-2.pt'), '--quick', '--inception_weights',
            str(tmp_path / 'nope.pth')]
    code, _, err = run_main(inference_comparison.main, argv, capsys)
    assert_one_line_error(code, err, 'not found', 'pytorch-fid')


class RunsCode:
    """A pickle whose loading would create a marker file (what a hostile weights file does)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), 'w'))


def test_malicious_inception_weights_do_not_run_code(trained_run, tmp_path, capsys):
    marker, weights = tmp_path / 'pwned', tmp_path / 'pt_inception.pth'
    torch.save({'Conv2d_1a_3x3.conv.weight': RunsCode(marker)}, weights)
    argv = ['--checkpoint', str(trained_run / 'model-2.pt'), '--quick', '--inception_weights', str(weights),
            '--results_folder', str(tmp_path / 'out')]
    code, _, err = run_main(inference_comparison.main, argv, capsys)
    assert_one_line_error(code, err, 'refusing to unpickle', 'could run code')
    assert not marker.exists()
    assert not (tmp_path / 'out').exists()  # refused before any work


def test_wrong_inception_weights_are_a_clear_error(trained_run, tmp_path, capsys):
    weights = tmp_path / 'other.pth'
    torch.save({'fc.weight': torch.zeros(2, 2)}, weights)
    argv = ['--checkpoint', str(trained_run / 'model-2.pt'), '--quick', '--inception_weights', str(weights),
            '--results_folder', str(tmp_path / 'out')]
    code, _, err = run_main(inference_comparison.main, argv, capsys)
    assert_one_line_error(code, err, 'does not hold the pytorch-fid Inception weights')


def test_shipped_classifier_is_the_60k_one_and_accurate(digits, classifier):
    import json
    from ddpm_mnist.evaluation.classifier import WEIGHTS, accuracy
    info = json.loads(WEIGHTS.with_suffix('.json').read_text())
    assert info['train_images'] == 60000 and info['test_accuracy'] >= 0.99
    assert accuracy(classifier, *digits) >= 0.985  # 600 test digits, measured here
