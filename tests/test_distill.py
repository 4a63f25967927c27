"""Consistency distillation (distill_ddpm_mnist.py): a tiny teacher distilled for a few steps lowers the loss; the
student is the identity at time 0; its multistep sampling is seeded and shaped like every sampler's; a student of
another teacher, a diffusion model asked for the consistency sampler, or a student distilled again is refused."""
import json

import pytest
import torch

import distill_ddpm_mnist
import inference_comparison
from conftest import assert_one_line_error, run_main
from ddpm_mnist.api import load_model, sample
from ddpm_mnist.model.network import build_unet
from ddpm_mnist.training.distill import ConsistencyDistillation, boundaries, consistency, scalings
from ddpm_mnist.training.run_folder import milestones


def distill_argv(teacher, data, results, steps=6, extra=()):
    return ['--teacher', str(teacher), '--data_folder', str(data), '--results_folder', str(results), '--boundaries',
            '5', '--train_num_steps', str(steps), '--save_and_sample_every', '3', '--train_batch_size', '16',
            '--num_samples', '4', '--train_lr', '1e-3', '--no-compile', '--device', 'cpu', '--seed', '0', *extra]


@pytest.fixture(scope='module')
def student_run(tmp_path_factory, trained_run, image_folder):
    results = tmp_path_factory.mktemp('student')
    distill_ddpm_mnist.main(distill_argv(trained_run / 'model-2.pt', image_folder, results))
    return results


def test_student_is_the_identity_at_time_zero(trained_run):
    c_skip, c_out = scalings(0)
    assert c_skip == 1 and c_out == 0
    teacher = load_model(trained_run / 'model-2.pt', precision='fp32').diffusion
    x = torch.randn(3, 1, 32, 32)
    assert torch.equal(consistency(teacher, teacher.model, x, torch.zeros(3, dtype=torch.long)), x)
    assert boundaries(20, 5)[0] == 19 and boundaries(20, 5)[-1] == 0  # T-1 down to the anchor


def test_distillation_lowers_the_loss_on_a_fixed_draw(trained_run):
    teacher_model = load_model(trained_run / 'model-2.pt', precision='fp32')
    config = teacher_model.config
    from ddpm_mnist.model.network import diffusion_settings
    student = ConsistencyDistillation(build_unet(config['model']), **diffusion_settings(config),
                                      student=dict(boundaries=5, target_decay=0.95, loss='huber'))
    student.model.load_state_dict(teacher_model.diffusion.model.state_dict())
    student.setup_student(teacher_model.diffusion, build_unet(config['model']))
    images = torch.rand(16, 1, 32, 32)

    def loss_on_the_fixed_draw():
        torch.manual_seed(0)
        with torch.no_grad():
            return float(student(images))
    before = loss_on_the_fixed_draw()
    optimiser = torch.optim.Adam(student.model.parameters(), lr=1e-3)
    torch.manual_seed(1)
    for _ in range(30):
        loss = student(images)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        student.target.update()
    assert loss_on_the_fixed_draw() < before


def test_the_command_writes_a_student_that_samples_in_one_or_two_steps(student_run, trained_run):
    assert milestones(student_run) == [1, 2]
    config = json.loads((student_run / 'config.json').read_text())
    assert config['student']['boundaries'] == 5 and config['student']['teacher'].endswith('model-2.pt')
    assert config['init_from']['file'] == 'model-2.pt'  # the student started from the teacher's weights
    from ddpm_mnist.model.checkpoints import export_ema
    record = json.loads(export_ema(student_run / 'model-2.pt', student_run / 'student').with_suffix('.json')
                        .read_text())
    teacher = json.loads(export_ema(trained_run / 'model-2.pt', student_run / 'teacher').with_suffix('.json')
                         .read_text())
    segments = record['provenance']['segments']  # the teacher's segments, then the student's own
    assert segments[:-1] == teacher['provenance']['segments'] and record['student']['boundaries'] == 5
    assert record['provenance']['total_images_seen'] == teacher['provenance']['total_images_seen'] + 6 * 16
    student = load_model(student_run, precision='fp32')
    for steps in (1, 2):
        first = sample(student, strategy='consistency', steps=steps, n=4, seed=3)
        assert first.shape == (4, 1, 32, 32) and first.isfinite().all() and 0 <= first.min() <= first.max() <= 1
        assert torch.equal(first, sample(student, strategy='consistency', steps=steps, n=4, seed=3))
    assert not torch.equal(sample(student, strategy='consistency', steps=2, n=4, seed=3),
                           sample(student, strategy='consistency', steps=2, n=4, seed=4))


def test_a_diffusion_model_refuses_the_consistency_sampler(trained_run, capsys):
    argv = ['--checkpoint', str(trained_run / 'model-2.pt'), '--strategy', 'consistency', '--num_samples', '4',
            '--results_folder', str(trained_run), '--device', 'cpu']
    code, _, err = run_main(inference_comparison.main, argv, capsys)
    assert_one_line_error(code, err, 'the consistency sampler needs a distilled student')


def test_another_teacher_or_a_student_as_teacher_is_refused(student_run, trained_run, image_folder, capsys):
    code, _, err = run_main(distill_ddpm_mnist.main, distill_argv(trained_run / 'model-1.pt', image_folder,
                                                                  student_run, steps=9), capsys)
    assert_one_line_error(code, err, 'did not start from --init_from')
    code, _, err = run_main(distill_ddpm_mnist.main, distill_argv(student_run / 'model-2.pt', image_folder,
                                                                  student_run.with_name('again')), capsys)
    assert_one_line_error(code, err, 'is a student already')
