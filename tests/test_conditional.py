"""Class-conditional training with classifier-free guidance: the library's conditional Unet trained on the labels,
guidance as eps_u + W (eps_c - eps_u) in one batched call, every sampler working on it, and bad input refused."""
import json
from pathlib import Path

import pytest
import torch
from denoising_diffusion_pytorch import classifier_free_guidance as library_cfg

import inference_comparison
import train_ddpm_mnist
from conftest import assert_one_line_error, run_main, run_twice, sample_with, train_argv
from ddpm_mnist.model.checkpoints import load_checkpoint, load_model
from ddpm_mnist.model.conditional import (UNGUIDED, Guidance, GuidedUnet, LowestAttentionConditionalUnet,
                                          balanced_labels, guided)
from ddpm_mnist.sampling.registry import DIFFUSION_SAMPLERS


@pytest.fixture(scope='module')
def conditional_run(tmp_path_factory, image_folder):
    results = tmp_path_factory.mktemp('conditional')
    train_ddpm_mnist.main(train_argv(image_folder, results, extra=['--conditional', '--cond_drop_prob', '0.2']))
    return results


def test_conditional_training_writes_the_usual_folder(conditional_run):
    config = json.loads((conditional_run / 'config.json').read_text())
    assert config['model']['num_classes'] == 10 and config['model']['cond_drop_prob'] == 0.2
    ckpt = load_checkpoint(conditional_run / 'model-2.pt')
    assert any(k.endswith('classes_emb.weight') for k in ckpt['model'])
    assert (conditional_run / 'sample-2.png').is_file()
    diffusion, config, _ = load_model(conditional_run / 'model-2.pt')
    assert isinstance(diffusion.model, GuidedUnet) and isinstance(diffusion.model.unet, library_cfg.Unet)


def test_lowest_attention_conditional_unet_keeps_the_library_names():
    library = library_cfg.Unet(dim=8, dim_mults=(1, 2), channels=1, num_classes=10)
    lean = LowestAttentionConditionalUnet(dim=8, dim_mults=(1, 2), channels=1, num_classes=10)
    assert set(lean.state_dict()) < set(library.state_dict())
    out = lean(torch.randn(2, 1, 28, 28), torch.tensor([1, 2]), torch.tensor([3, 4]), cond_drop_prob=0.)
    assert out.shape == (2, 1, 28, 28)


def test_guidance_is_eps_u_plus_w_times_the_difference(conditional_run):
    diffusion, _, _ = load_model(conditional_run / 'model-2.pt')
    unet, guided_unet = diffusion.model.unet, diffusion.model
    x, t, labels = torch.randn(3, 1, 32, 32), torch.tensor([5, 9, 13]), torch.tensor([1, 4, 7])
    with torch.inference_mode():
        eps_c = unet(x, t, labels, cond_drop_prob=0.)
        eps_u = unet(x, t, labels, cond_drop_prob=1.)
        for scale in (0.0, 1.0, 3.0):
            guided_unet.condition(labels, Guidance(scale, False, 0.0))
            assert torch.allclose(guided_unet(x, t), eps_u + scale * (eps_c - eps_u), atol=1e-5)
    calls = []
    handle = unet.register_forward_hook(lambda *a: calls.append(1))
    guided_unet.condition(labels, Guidance(2.0, False, 0.0))
    with torch.inference_mode():
        guided_unet(x, t)
    handle.remove()
    assert calls == [1]  # both halves in one batched Unet call


def test_library_variant_removes_the_parallel_part():
    conditional, unconditional = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    out = guided(conditional, unconditional, Guidance(3.0, True, 0.0))
    update = (out - conditional) / 2
    assert abs(float((update.flatten(1) * conditional.flatten(1)).sum(1).abs().max())) < 1e-4  # orthogonal to eps_c
    assert torch.equal(guided(conditional, unconditional, UNGUIDED), conditional)


@pytest.mark.parametrize('strategy', DIFFUSION_SAMPLERS)
def test_every_sampler_works_with_guidance(conditional_run, strategy):
    diffusion, _, _ = load_model(conditional_run / 'model-2.pt')
    images = sample_with(diffusion, strategy=strategy, num_samples=4, batch_size=2, steps=3,
                    labels=torch.tensor([0, 1, 2, 3]), guidance=Guidance(2.0, False, 0.0))
    assert images.shape == (4, 1, 32, 32) and images.isfinite().all()


def test_balanced_labels_put_one_digit_per_row():
    assert balanced_labels(6, [0, 3, 9]).tolist() == [0, 0, 3, 3, 9, 9]
    assert balanced_labels(20).tolist() == [d for d in range(10) for _ in range(2)]


def test_digits_and_guidance_from_the_command_line(conditional_run, idx_dir, tmp_path, capsys):
    argv = ['--checkpoint', str(conditional_run / 'model-2.pt'), '--strategy', 'ddim', '--sample_steps', '3',
            '--num_samples', '6', '--digits', '0,3,9', '--guidance_scale', '2', '--results_folder', str(tmp_path)]
    code, out, err = run_main(inference_comparison.main, argv, capsys)
    assert code == 0, err
    record = json.loads(next(tmp_path.rglob('*_digits039_w2.json')).read_text())
    assert record['digits'] == [0, 3, 9] and record['guidance']['scale'] == 2.0
    # the sweep works on a conditional model (balanced digits, unguided)
    argv = ['--checkpoint', str(conditional_run / 'model-2.pt'), '--compare', '--compare_samplers', 'ddim',
            '--compare_steps', '2', '--compare_etas', '0', '--num_samples', '10', '--results_folder', str(tmp_path),
            '--second_classifier', 'none', '--raw_dir', str(idx_dir)]
    assert run_main(inference_comparison.main, argv, capsys)[0] == 0


@pytest.mark.parametrize('extra, message', [
    (['--digits', '10'], '--digits 10'),
    (['--digits', '3,3'], '--digits 3,3'),
    (['--digits', 'seven'], '--digits seven'),
    (['--guidance_scale', '-1'], '--guidance_scale'),
    (['--guidance_scale', 'nan'], '--guidance_scale'),
])
def test_bad_conditional_flags(conditional_run, tmp_path, extra, message, capsys):
    argv = ['--checkpoint', str(conditional_run / 'model-2.pt'), '--results_folder', str(tmp_path / 'out'), *extra]
    code, _, err = run_main(inference_comparison.main, argv, capsys)
    assert_one_line_error(code, err, message)
    assert not (tmp_path / 'out').exists()


def test_digits_on_an_unconditional_model_is_refused(trained_run, tmp_path, capsys):
    for extra in (['--digits', '7'], ['--guidance_scale', '3']):
        argv = ['--checkpoint', str(trained_run / 'model-2.pt'), '--strategy', 'ddim', '--results_folder',
                str(tmp_path / 'out'), *extra]
        code, _, err = run_main(inference_comparison.main, argv, capsys)
        assert_one_line_error(code, err, 'class-conditional')
        assert not (tmp_path / 'out').exists()


def test_conditional_needs_the_labels(tmp_path, image_folder, capsys):
    import shutil
    folder = tmp_path / 'unlabelled'
    shutil.copytree(image_folder, folder)
    (folder / 'labels.csv').unlink()
    code, _, err = run_main(train_ddpm_mnist.main, train_argv(folder, tmp_path / 'r', extra=['--conditional']), capsys)
    assert_one_line_error(code, err, 'labels.csv')


def test_init_from_an_unconditional_model_is_refused(trained_run, tmp_path, image_folder, capsys):
    argv = train_argv(image_folder, tmp_path / 'r', extra=['--conditional', '--init_from',
                                                            str(trained_run / 'model-2.pt')])
    code, _, err = run_main(train_ddpm_mnist.main, argv, capsys)
    assert_one_line_error(code, err, 'num_classes')


def test_guidance_sweep_scores_each_scale_and_resumes(conditional_run, idx_dir, tmp_path, capsys):
    """One row per scale (accuracy against the requested digits, FID, the plot); rerun, it reuses every scale."""
    from conftest import load_script
    script = load_script('guidance_sweep')
    out = tmp_path / 'guidance'
    argv = ['--checkpoint', str(conditional_run / 'model-2.pt'), '--raw_dir', str(idx_dir), '--scales', '1,3',
            '--steps', '3', '--num_samples', '20', '--output', str(out)]
    result = None
    for run, printed in enumerate(run_twice(script.main, argv, capsys)):
        saved = json.loads(out.with_suffix('.json').read_text())
        result = result or saved
        assert printed.count('from the earlier run') == (2 if run else 0), printed
        assert saved['rows'] == result['rows']
    assert [r['scale'] for r in result['rows']] == [1.0, 3.0] and all(0 <= r['accuracy'] <= 1 for r in result['rows'])
    assert result['floor_fid'] is not None and out.with_suffix('.png').stat().st_size > 0
    assert 'ddim 3 steps, eta 0,' in out.with_suffix('.md').read_text()
    assert not Path(result['checkpoint']).is_absolute()  # no machine's absolute paths in a record
    assert not list(tmp_path.glob('.*'))  # no temporary left


def test_classification_accuracy_score_trains_on_generated_and_on_real(conditional_run, idx_dir, tmp_path, capsys):
    from conftest import load_script
    script = load_script('classification_accuracy_score')
    out = tmp_path / 'cas'
    argv = ['--checkpoint', str(conditional_run / 'model-2.pt'), '--raw_dir', str(idx_dir), '--per_class', '10',
            '--steps', '2', '--epochs', '1', '--output', str(out), '--cache_dir', str(tmp_path / 'cache')]
    printed, again = run_twice(script.main, argv, capsys)
    result = json.loads(out.with_suffix('.json').read_text())
    assert 0 <= result['accuracy_trained_on_generated'] <= 1 and 0 <= result['accuracy_trained_on_real'] <= 1
    assert result['real_training_digits'] == 120 and 'generated 100 digits' in printed
    assert again.count('from the earlier run') == 2 and 'generated 100 digits' not in again, again
    # killed after the classifiers' generation: the digits come back from the cache, one file per digit
    assert len(list((tmp_path / 'cache').glob('*/batch-*.npy'))) == 10
    out.with_suffix('.json').unlink()
    code, resumed, err = run_main(script.main, argv, capsys)
    assert code == 0 and 'generated 0 digits' in resumed, err
    assert json.loads(out.with_suffix('.json').read_text())['accuracy_trained_on_generated'] == \
        result['accuracy_trained_on_generated']  # the same digits, the same seed: the same classifier


def test_a_folder_written_before_datasets_had_entries_is_mnist_with_its_classes(tmp_path):
    """A data folder whose dataset.json predates the dataset entries (no dataset, channels or classes: the shipped
    models' own folders) reads as MNIST with its ten digits, so a conditional run or student can train on it."""
    from ddpm_mnist.data import fit_to_dataset, folder_info
    (tmp_path / 'dataset.json').write_text(json.dumps({'num_images': 3, 'splits': {'train': 3},
                                                       'image_size': [28, 28]}))
    info = folder_info(tmp_path)
    assert info['dataset'] == 'mnist' and info['channels'] == 1 and len(info['classes']) == 10
    model, _ = fit_to_dataset(info, model={'num_classes': 10}, diffusion={})
    assert model['num_classes'] == 10 and model['channels'] == 1
