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
from ddpm_mnist.utils import UserError


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


def test_the_second_order_teacher_step_follows_the_ode_more_closely():
    """For data whose denoiser is known exactly (x0 ~ N(0, 0.3^2 I)) the ODE's end from t to s is known in closed
    form, x_s = sqrt(v_s / v_t) x_t with v = abar 0.3^2 + 1 - abar: the second-order teacher step lands more than
    three times closer to it than one DDIM step, averaged over every pair of adjacent boundaries."""
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet
    from denoising_diffusion_pytorch.denoising_diffusion_pytorch import ModelPrediction
    settings, scale = dict(image_size=8, timesteps=1000, objective='pred_v', beta_schedule='cosine'), 0.3

    def unet():
        return Unet(dim=8, dim_mults=(1, 2), channels=1)
    teacher = GaussianDiffusion(unet(), **settings)

    def exact_denoiser(x, t, *args, **kwargs):
        abar = teacher.alphas_cumprod[t][:, None, None, None]
        x0 = abar.sqrt() * scale ** 2 / (abar * scale ** 2 + 1 - abar) * x  # E[x0 | x_t]
        return ModelPrediction(teacher.predict_noise_from_start(x, t, x0), x0)
    teacher.model_predictions = exact_denoiser
    errors = {}
    for order in (1, 2):
        student = ConsistencyDistillation(unet(), **settings, student=dict(boundaries=50, target_decay=0.95,
                                                                         loss='huber', teacher_order=order))
        student.setup_student(teacher, unet())
        times = torch.tensor(student.times)
        t, s = times[:-1], times[1:]

        def variance(u):
            return (student.alphas_cumprod[u] * scale ** 2 + 1 - student.alphas_cumprod[u])[:, None, None, None]
        x_t = variance(t).sqrt() * torch.randn(len(t), 1, 8, 8, generator=torch.Generator().manual_seed(0))
        errors[order] = (student.teacher_step(x_t, t, s) - (variance(s) / variance(t)).sqrt() * x_t).abs().mean()
    assert 0 < errors[2] < errors[1] / 3


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
    code, _, err = run_main(distill_ddpm_mnist.main, distill_argv(trained_run / 'model-2.pt', image_folder,
                                                                  student_run.with_name('guided'),
                                                                  extra=['--guidance_scale', '1.5']), capsys)
    assert_one_line_error(code, err, '--guidance_scale needs a class-conditional teacher')


def test_a_student_continues_from_its_export_as_a_later_segment(student_run, trained_run, image_folder, tmp_path,
                                                                capsys):
    """--init_from a student's export starts a new segment from its weights against the same teacher: the record
    names both, the provenance carries on; a diffusion model, a student of another teacher or other boundaries are
    refused in one line."""
    from ddpm_mnist.model.checkpoints import export_ema, read_weights
    from ddpm_mnist.utils import file_digest
    export = export_ema(student_run / 'model-2.pt', tmp_path / 'student')
    teacher = trained_run / 'model-2.pt'
    results = tmp_path / 'segment-2'
    code, _, err = run_main(distill_ddpm_mnist.main, distill_argv(teacher, image_folder, results, steps=3,
                                                                  extra=['--init_from', str(export)]), capsys)
    assert code == 0, err
    config = json.loads((results / 'config.json').read_text())
    assert config['init_from']['file'] == 'student.safetensors' and config['init_from']['weights'] == 'ema only'
    assert config['student']['teacher_sha256_16'] == file_digest(teacher)
    segments = config['init_from']['provenance']['segments']
    assert segments[-1]['command'].startswith('python3 distill_ddpm_mnist.py')  # the student's first segment
    first = read_weights(export)[1]
    # three more steps at lr 1e-3 moved the weights the segment started from
    assert any(not torch.equal(first[k], v) for k, v in read_weights(results / 'model-1.pt')[1].items())
    student = load_model(results, precision='fp32')
    assert sample(student, strategy='consistency', steps=2, n=4, seed=0).shape == (4, 1, 32, 32)
    for argv, message in (
            (distill_argv(teacher, image_folder, tmp_path / 'a', extra=['--init_from', str(teacher)]),
             'is not a distilled student'),
            (distill_argv(trained_run / 'model-1.pt', image_folder, tmp_path / 'b', extra=['--init_from', str(export)]),
             'was distilled from another teacher'),
            (distill_argv(teacher, image_folder, tmp_path / 'c', extra=['--init_from', str(export), '--boundaries',
                                                                        '4']), 'learned with --boundaries 5')):
        code, _, err = run_main(distill_ddpm_mnist.main, argv, capsys)
        assert_one_line_error(code, err, message)
        assert not (tmp_path / argv[5]).exists()


def test_a_conditional_teacher_gives_a_student_of_its_guided_ode(tmp_path, image_folder, capsys):
    """--guidance_scale W on a class-conditional teacher: the teacher steps along its guided ODE (eps_u + W (eps_c -
    eps_u)), the student learns it at the same labels, is exported with W in its record, samples the requested
    digits with the consistency sampler (one network call per step, no guidance of its own), and W on an
    unconditional teacher is refused."""
    import train_ddpm_mnist
    from conftest import train_argv
    from ddpm_mnist.model.conditional import GuidedUnet
    teacher_run = tmp_path / 'teacher'
    train_ddpm_mnist.main(train_argv(image_folder, teacher_run, extra=['--conditional', '--cond_drop_prob', '0.2']))
    results = tmp_path / 'student'
    code, _, err = run_main(distill_ddpm_mnist.main, distill_argv(teacher_run / 'model-2.pt', image_folder, results,
                                                                  extra=['--guidance_scale', '2']), capsys)
    assert code == 0, err
    config = json.loads((results / 'config.json').read_text())
    assert config['student']['guidance_scale'] == 2 and config['model']['num_classes'] == 10
    student = load_model(results, precision='fp32')
    assert isinstance(student.diffusion.model, GuidedUnet) and student.diffusion.student['guidance_scale'] == 2
    sevens = sample(student, strategy='consistency', steps=2, n=4, seed=3, digits=[7])
    assert sevens.shape == (4, 1, 32, 32) and torch.equal(
        sevens, sample(student, strategy='consistency', steps=2, n=4, seed=3, digits=[7]))
    assert not torch.equal(sevens, sample(student, strategy='consistency', steps=2, n=4, seed=3, digits=[1]))
    with pytest.raises(UserError, match='learned its teacher guided at W = 2'):
        sample(student, strategy='consistency', steps=2, n=4, digits=[7], guidance_scale=1.5)

    # the teacher's step is the guided one: W = 0 and W = 2 move the same x_t to different places
    teacher = load_model(teacher_run / 'model-2.pt', precision='fp32').diffusion
    from ddpm_mnist.training.distill import student_diffusion
    trained = student_diffusion(dict(config, student=dict(config['student'], guidance_scale=0.0)))
    object.__setattr__(trained, 'teacher', teacher)
    x_t, t, s = torch.randn(2, 1, 32, 32), torch.tensor([15, 15]), torch.tensor([10, 10])
    labels = torch.tensor([3, 8])
    unguided = trained.teacher_step(x_t, t, s, labels)
    trained.student['guidance_scale'] = 2.0
    assert not torch.allclose(unguided, trained.teacher_step(x_t, t, s, labels))


def test_the_export_gate_scores_a_student_with_its_own_sampler(student_run, trained_run, idx_dir, tmp_path, capsys):
    """A student is gated with the consistency sampler at 1, 2 and 4 steps (DDIM would score weights that are not a
    denoiser any more), against a student; a student over a diffusion model's export is one line, nothing written."""
    from ddpm_mnist.cli import export
    from ddpm_mnist.model.checkpoints import export_ema
    current = export_ema(student_run / 'model-1.pt', tmp_path / 'student')
    lines = []
    new, old = export.compare_with_current(student_run / 'model-2.pt', current, raw_dir=idx_dir, data_root=tmp_path,
                                           num_samples=12, log=lines.append)
    assert list(new) == list(old) == ['Consistency 1', 'Consistency 2', 'Consistency 4']
    assert len(lines) == 6 and all('x the floor' in line for line in lines)
    teacher = export_ema(trained_run / 'model-2.pt', tmp_path / 'teacher')
    before = teacher.read_bytes()
    code, _, err = run_main(export.main, [str(student_run / 'model-2.pt'), str(tmp_path / 'teacher'), '--raw_dir',
                                          str(idx_dir), '--num_samples', '12'], capsys)
    assert_one_line_error(code, err, 'not the same kind of model', 'a student replaces a student')
    assert teacher.read_bytes() == before


def test_the_consistency_sampler_without_a_checkpoint_opens_the_shipped_student(student_run, tmp_path, monkeypatch,
                                                                                capsys):
    """`--strategy consistency --sample_steps 2` with no other flag samples the shipped student (the conditional one
    with --conditional); where none is shipped, one line says so and how to make one."""
    import ddpm_mnist.api
    from ddpm_mnist.model.checkpoints import export_ema
    monkeypatch.setitem(ddpm_mnist.api.SHIPPED_STUDENTS, False, tmp_path / 'absent.safetensors')
    argv = ['--strategy', 'consistency', '--sample_steps', '2', '--num_samples', '4', '--results_folder',
            str(tmp_path / 'out'), '--device', 'cpu']
    code, _, err = run_main(inference_comparison.main, argv, capsys)
    assert_one_line_error(code, err, 'no distilled student is shipped yet', 'distill_ddpm_mnist.py')
    shipped = export_ema(student_run / 'model-2.pt', tmp_path / 'ddpm_mnist_small_student')
    monkeypatch.setitem(ddpm_mnist.api.SHIPPED_STUDENTS, False, shipped)
    code, out, err = run_main(inference_comparison.main, argv, capsys)
    assert code == 0, err
    assert 'Consistency 2' in out or 'consistency' in out.lower()
    assert list((tmp_path / 'out' / 'inference_pretrained_student').rglob('*.png'))


def test_the_training_curve_of_a_student_scores_its_own_sampler(student_run, idx_dir, tmp_path, capsys):
    """A student's run folder gets a curve of its consistency sampler at each --student_steps, one series each."""
    from conftest import load_script
    script = load_script('training_curve')
    out = tmp_path / 'curve'
    code, stdout, err = run_main(script.main, ['--results_folder', str(student_run), '--raw_dir', str(idx_dir),
                                               '--num_samples', '10', '--student_steps', '1,2', '--output', str(out)],
                                 capsys)
    assert code == 0, err
    rows = json.loads(out.with_suffix('.json').read_text())['rows']
    assert sorted({row['series'] for row in rows}) == ['Consistency 1', 'Consistency 2'] and len(rows) == 4
    assert '| Consistency 2 | ' in out.with_suffix('.md').read_text()


def test_a_students_teacher_is_found_by_its_path_or_its_digest(student_run, trained_run, tmp_path, monkeypatch):
    """The teacher a student recorded is its path; where that file is gone (a student shipped, or carried to another
    machine), the shipped model with the recorded digest; else one clear error."""
    import shutil
    import ddpm_mnist.api
    from ddpm_mnist.api import teacher_path
    from ddpm_mnist.utils import MissingFile
    student = load_model(student_run, precision='fp32')
    assert teacher_path(student) == trained_run / 'model-2.pt'
    student.diffusion.student['teacher'] = str(tmp_path / 'moved.pt')
    with pytest.raises(MissingFile, match='is not here'):
        teacher_path(student)
    shipped = tmp_path / 'shipped.pt'
    shutil.copy(trained_run / 'model-2.pt', shipped)
    monkeypatch.setattr(ddpm_mnist.api, 'SHIPPED', shipped)
    assert teacher_path(student) == shipped


def test_the_sweep_adds_a_students_rows_and_runs_ddpm_on_every_kth_x_t(student_run, trained_run, idx_dir, tmp_path,
                                                                      monkeypatch, capsys):
    """--compare_student adds the student's consistency rows from the same x_T; --compare_ddpm_samples draws DDPM
    on every k-th x_T, pairs it with the others there, and leaves it out of 'best'; a student of another teacher and
    a DDPM N that does not divide N are one-line errors."""
    from ddpm_mnist.sampling import loop
    seen = []
    real = loop.run_batch
    monkeypatch.setattr(loop, 'run_batch', lambda d, sampler, x_T, *a: seen.append(
        (type(sampler).__name__.lower(), x_T.clone())) or real(d, sampler, x_T, *a))

    def argv(checkpoint, *extra):
        return ['--checkpoint', str(checkpoint), '--compare', '--compare_samplers', 'ddpm,ddim', '--compare_steps', '2',
                '--compare_etas', '0', '--num_samples', '8', '--batch_size', '8', '--raw_dir', str(idx_dir),
                '--results_folder', str(tmp_path), '--device', 'cpu', '--second_classifier', 'none', *extra]

    code, out, err = run_main(inference_comparison.main, argv(trained_run / 'model-2.pt', '--compare_ddpm_samples',
                                                              '4', '--compare_student', str(student_run),
                                                              '--compare_student_steps', '1,2'), capsys)
    assert code == 0, err
    result = json.loads(next(tmp_path.glob('inference_model-2_*/comparison/comparison.json')).read_text())
    rows = {r['config']: r for r in result['rows']}
    assert list(rows) == ['DDPM 20', 'DDIM 2, eta 0.0', 'Consistency 1', 'Consistency 2']
    assert rows['DDPM 20']['n'] == 4 and all(rows[c]['n'] == 8 for c in list(rows)[1:])
    assert not rows['DDPM 20']['is_best'] and rows['DDIM 2, eta 0.0']['fid_minus_ddpm'] is not None
    starts = {}
    for name, x_T in seen:
        starts.setdefault(name, x_T)
    assert torch.equal(starts['ddpm'], starts['ddim'][::2]) and torch.equal(starts['consistency'], starts['ddim'])
    assert result['student_sha256_16'] and 'N = 4, one x_T in 2' in out
    assert 'real training digits (floor), N = 4' in result['calibration']  # DDPM's FID is read at its own N
    code, _, err = run_main(inference_comparison.main, argv(trained_run / 'model-1.pt', '--compare_student',
                                                            str(student_run)), capsys)
    assert_one_line_error(code, err, 'was distilled from another model')
    code, _, err = run_main(inference_comparison.main, argv(trained_run / 'model-2.pt', '--compare_ddpm_samples',
                                                            '3'), capsys)
    assert_one_line_error(code, err, '--compare_ddpm_samples 3 must divide --num_samples 8')
    code, _, err = run_main(inference_comparison.main, argv(trained_run / 'model-2.pt', '--compare_student',
                                                            str(trained_run / 'model-2.pt')), capsys)
    assert_one_line_error(code, err, 'is not a distilled student')


def test_a_students_two_step_time_is_chosen_and_followed(student_run, idx_dir, tmp_path, capsys):
    """scripts/student_times.py scores every other boundary as the 2-step time against training digits and writes
    the best into the export's record; the sampler then follows it (other step counts keep their even spacing);
    a hand-edited record that is not descending boundaries, or --write on a milestone, is one line."""
    from conftest import load_script
    from ddpm_mnist.model.checkpoints import export_ema
    from ddpm_mnist.sampling.samplers import Consistency
    script = load_script('student_times')
    export = export_ema(student_run / 'model-2.pt', tmp_path / 'student')
    code, out, err = run_main(script.main, ['--student', str(export), '--raw_dir', str(idx_dir), '--num_samples',
                                            '12', '--write'], capsys)
    assert code == 0, err
    record = json.loads(export.with_suffix('.json').read_text())
    student = load_model(export, precision='fp32')
    sampler = Consistency(student.diffusion)
    search = record['student']['sample_times_search']
    scored = search['fid_by_time']['2']
    assert list(map(int, scored)) == sampler.boundaries[1::2] and set(search['fid_even_spacing']) == {'2'}
    if min(scored.values()) > search['fid_even_spacing']['2']:  # the even spacing won: nothing stored for 2 steps
        assert 'the even spacing is kept' in out and '2' not in record['student']['sample_times']
        record['student']['sample_times'] = {'2': [sampler.boundaries[0], int(min(scored, key=scored.get))]}
        export.with_suffix('.json').write_text(json.dumps(record))
        student = load_model(export, precision='fp32')
        sampler = Consistency(student.diffusion)
    first, chosen = record['student']['sample_times']['2']
    assert first == sampler.boundaries[0] and scored[str(chosen)] == min(scored.values())
    assert f'best: 2 steps at {first}, {chosen}' in out
    sampler.set_timesteps(2)
    assert sampler.timesteps == [first, chosen]
    sampler.set_timesteps(3)  # no tuned times for 3 steps: evenly spread, as before
    assert len(sampler.timesteps) == 3 and sampler.timesteps[0] == first
    for bad in ({'2': [chosen, first]}, {'2': [first, str(chosen)]}, [first, chosen]):  # ascending, text, no steps
        record['student']['sample_times'] = bad
        export.with_suffix('.json').write_text(json.dumps(record))
        with pytest.raises(UserError, match='sample_times'):
            sample(load_model(export, precision='fp32'), strategy='consistency', steps=2, n=2)
    code, _, err = run_main(script.main, ['--student', str(student_run / 'model-2.pt'), '--raw_dir', str(idx_dir),
                                          '--write'], capsys)
    assert_one_line_error(code, err, 'export')


def test_more_sampling_steps_are_searched_greedily_after_the_shorter_ones():
    """scripts/student_times.py's greedy search (Song et al. 2023): each next time is the best of every other
    boundary below the last, with the earlier times kept and room left for the times still to come."""
    from conftest import load_script
    greedy_times = load_script('student_times').greedy_times
    boundaries = list(range(999, 0, -20))  # 999, 979, ..., 19: 50 boundaries, as the shipped student's
    wanted = [999, 700, 400, 100]
    calls = []

    def score(times):  # closest to `wanted` wins; the prefix must be the times chosen so far
        calls.append(list(times))
        return sum(abs(a - b) for a, b in zip(times, wanted))

    times, stages = greedy_times(score, boundaries, 4)
    assert times == [999, 699, 419, 99] and sorted(stages) == [2, 3, 4]
    assert list(stages[2]) == [t for t in boundaries[1::2] if t > 19]  # the last boundary stays free for later times
    assert all(t < 699 for t in stages[3]) and all(t < 419 for t in stages[4]) and 19 in stages[4]
    assert all(c[:len(c) - 1] == times[:len(c) - 1] for c in calls)
    assert greedy_times(score, boundaries, 2)[0] == [999, 699]
