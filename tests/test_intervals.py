"""Intervals: the bootstrap of FID and KID, paired differences, and the sweep's use of them."""
import json

import numpy as np
import pytest

import inference_comparison
from conftest import run_main
from ddpm_mnist.evaluation.intervals import (FrechetToReference, KernelToReference, differs, fid_interval, kid_interval,
                                             paired_fid_difference, proportion_interval)
from ddpm_mnist.evaluation.metrics import frechet_distance, gaussian_fit


@pytest.fixture(scope='module')
def gaussian_features():
    rng = np.random.default_rng(0)
    scale = np.linspace(0.2, 2.0, 16)
    reference = rng.normal(size=(4000, 16)) * scale
    return reference, lambda n, shift=0.0: rng.normal(size=(n, 16)) * scale + shift


def test_fast_frechet_distance_equals_the_sqrtm_one(gaussian_features):
    reference, draw = gaussian_features
    fit, features = gaussian_fit(reference), draw(300, 0.1)
    assert FrechetToReference(fit)(features) == pytest.approx(frechet_distance(features, fit), rel=1e-6)


def test_fid_interval_brackets_the_estimate_and_narrows_with_n(gaussian_features):
    reference, draw = gaussian_features
    fit = gaussian_fit(reference)
    widths = []
    for n in (100, 1600):
        features = draw(n, 0.3)
        fid = frechet_distance(features, fit)
        interval = fid_interval(features, fit, fid)
        assert interval.low <= fid <= interval.high
        widths.append(interval.high - interval.low)
    assert widths[1] < widths[0] / 2


def test_paired_difference_of_identical_samples_is_zero_and_not_significant(gaussian_features):
    reference, draw = gaussian_features
    features = draw(200, 0.2)
    same = paired_fid_difference(features, features.copy(), gaussian_fit(reference))
    assert same.value == 0 and same.low == 0 and same.high == 0 and not differs(same)


def test_paired_difference_finds_a_real_shift(gaussian_features):
    reference, draw = gaussian_features
    base = draw(300)
    shifted = base + 0.5  # the same samples, moved: a paired comparison sees it at once
    diff = paired_fid_difference(shifted, base, gaussian_fit(reference))
    assert differs(diff) and diff.low > 0


def test_inception_score_interval_brackets_it_and_narrows_with_n():
    """The IS bootstrap: resampled class probabilities of confident, balanced digits; wider at small N."""
    from ddpm_mnist.evaluation.intervals import bootstrap_interval
    from ddpm_mnist.evaluation.metrics import inception_score
    rng = np.random.default_rng(1)
    widths = []
    for n in (100, 1600):
        logits = rng.normal(size=(n, 10)) + 4 * np.eye(10)[rng.integers(0, 10, n)]
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        score = inception_score(probs)
        interval = bootstrap_interval(lambda i: inception_score(probs[i]), n, score)
        assert interval.low <= score <= interval.high and 1 < score < 10
        widths.append(interval.high - interval.low)
    assert widths[1] < widths[0] / 2


def test_kid_is_unbiased_near_zero_for_the_same_distribution(gaussian_features):
    reference, draw = gaussian_features
    kernel = KernelToReference(reference)
    same = kid_interval(draw(300), kernel)
    other = kid_interval(draw(300, 0.5), kernel)
    assert same.low <= 0 <= same.high or abs(same.value) < 0.05 * other.value
    assert other.low > same.high



def test_kid_resamples_by_counts_match_resamples_by_index(gaussian_features):
    """The K @ C form of the KID bootstrap gives each resample's MMD as gathering its index block does."""
    from ddpm_mnist.evaluation.intervals import resample_indices, shifted_interval
    reference, draw = gaussian_features
    kernel, features = KernelToReference(reference), draw(120, 0.3)
    k_gg, cross_means = kernel.kernels(features)
    by_index = shifted_interval(kernel.mmd(k_gg, cross_means),
                                [kernel.mmd(k_gg, cross_means, i) for i in resample_indices(120, seed=3)])
    by_counts = kid_interval(features, kernel, seed=3)
    assert np.allclose(by_counts, by_index, rtol=1e-9, atol=1e-12)
    assert by_counts.low < by_counts.value < by_counts.high

def test_quick_comparison_reports_intervals_and_its_headline(trained_run, idx_dir, tmp_path, monkeypatch, capsys):
    from ddpm_mnist.evaluation import sweep
    monkeypatch.setitem(sweep.QUICK, 'headline', ('DDIM 2, eta 0.0', 'DDIM 4, eta 0.0'))
    argv = ['--checkpoint', str(trained_run / 'model-2.pt'), '--quick', '--num_samples', '12', '--batch_size', '12',
            '--compare_steps', '2,4', '--compare_solver_steps', '2', '--results_folder', str(tmp_path),
            '--raw_dir', str(idx_dir)]
    code, out, err = run_main(inference_comparison.main, argv, capsys)
    assert code == 0, err
    folder = next(tmp_path.glob('inference_model-2_*')) / 'quick_comparison'
    result = json.loads((folder / 'comparison.json').read_text())
    for row in result['rows']:
        assert row['fid_low'] <= row['fid'] <= row['fid_high'] and np.isfinite(row['kid'])
        assert 'fid_minus_best' in row
    [pair] = result['pairs']
    assert (pair['a'], pair['b']) == ('DDIM 2, eta 0.0', 'DDIM 4, eta 0.0') and pair['low'] <= pair['value'] <= pair['high']
    table = (folder / 'comparison.md').read_text()
    assert '**DDIM 2, eta 0.0 against DDIM 4, eta 0.0**' in table and 'What these numbers can show' in table


def test_interval_cells_and_error_bars_show_what_a_row_has():
    from ddpm_mnist.evaluation.intervals import error_bars, interval_cell
    rows = [dict(fid=10.0, fid_low=8.5, fid_high=12.0), dict(fid=9.0), dict(fid=7.0, fid_low=None, fid_high=None),
            dict(fid=6.0, fid_low=float('nan'), fid_high=float('nan'))]
    assert [interval_cell(r, 'fid') for r in rows] == ['10.00 [8.50, 12.00]', '9.00', '7.00', '6.00']
    assert error_bars(rows) == [[1.5, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]]
    assert interval_cell(dict(fid=float('nan')), 'fid') == '–' and interval_cell({}, 'kid') == '–'  # not measured


def test_share_interval_brackets_the_share_and_matches_the_binomial_width():
    for share, n in ((0.815, 1000), (0.5, 200), (0.99, 1000)):
        _, low, high = proportion_interval(share, n)
        assert low <= share <= high <= 1.0
        binomial_half_width = 1.96 * np.sqrt(share * (1 - share) / n)
        assert high - low == pytest.approx(2 * binomial_half_width, rel=0.25)
    assert proportion_interval(1.0, 100)[1:] == (1.0, 1.0)  # every digit kept: nothing to resample
