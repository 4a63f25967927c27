"""The DDPM vs DDIM sweep: every config from the same noise, timed, scored, cached and tabulated."""
import csv
import hashlib
import json
import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .metrics import METRICS_VERSION
from .sampling import initial_noise, nfe, timed_sample
from .utils import UserError, atomic_path, file_digest, machine_name, write_json

DEFAULT_STEPS = (10, 20, 50, 100, 200, 1000)
DEFAULT_ETAS = (0.0, 0.5, 1.0)
QUICK = dict(steps=(10, 50), etas=(0.0, 1.0), num_samples=36)
COLUMNS = ('config', 'strategy', 'steps', 'eta', 'nfe', 'n', 'seconds_per_image', 'fid', 'inception_score',
           'confidence', 'min_class_share', 'class_kl_uniform', 'precision', 'recall', 'median_nn_train_l2',
           'near_copy_share', 'flip_preferred_share', 'inception_fid')


def sweep_configs(steps, etas, total_timesteps, ddpm=True):
    """DDPM (if asked) then DDIM at every steps x eta. DDIM with S = T and eta = 1 is left out next to DDPM:
    it is the same update with the same noise (tests/test_inference.py checks they agree), so its row would
    only repeat DDPM's at the sweep's highest cost."""
    configs = [dict(strategy='ddpm', steps=total_timesteps, eta=None)] if ddpm else []
    for s in steps:
        if not 1 <= s <= total_timesteps:
            raise UserError(f'--compare_steps {s} is outside 1..T={total_timesteps}')
        configs += [dict(strategy='ddim', steps=s, eta=float(e)) for e in etas
                    if not (ddpm and s == total_timesteps and e == 1)]
    return configs


def config_label(c):
    return f'DDPM {c["steps"]}' if c['strategy'] == 'ddpm' else f'DDIM {c["steps"]}, eta {c["eta"]}'


def grid_name(strategy, steps, eta):
    """The original project's file names: ddpm_steps{S} and ddim_steps{S}_eta{E}."""
    return f'ddpm_steps{steps}' if strategy == 'ddpm' else f'ddim_steps{steps}_eta{eta}'


def save_grid(images, path, record=None):
    """A square grid PNG, written atomically; `record` (the run's settings) goes inside it as a PNG text chunk,
    so a grid always carries its own description, even if the JSON copy beside it was never written."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo
    from torchvision.utils import make_grid
    grid = make_grid(images, nrow=math.ceil(math.sqrt(len(images))))
    pixels = grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()  # as save_image
    info = PngInfo()
    if record is not None:
        info.add_text('ddpm_mnist', json.dumps(record))
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format='png', pnginfo=info)


def grid_record(path):
    """The settings stored inside a grid by save_grid (None if it has none)."""
    from PIL import Image
    with Image.open(path) as image:
        text = image.text.get('ddpm_mnist')
    return json.loads(text) if text else None


def cache_key(**settings):
    """Cache entries carry the metrics version, so results scored by an older set of metrics are recomputed."""
    settings = dict(settings, metrics=METRICS_VERSION)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def run_sweep(diffusion, evaluator, out_dir, checkpoint, steps=DEFAULT_STEPS, etas=DEFAULT_ETAS, num_samples=1000,
              batch_size=250, seed=0, precision='fp32', grid_images=64, extra_score=None, ddpm=True):
    """Sample and score every config; results are cached per config so reruns and interrupted sweeps resume."""
    out_dir = Path(out_dir)
    (out_dir / 'cache').mkdir(parents=True, exist_ok=True)
    (out_dir / 'grids').mkdir(exist_ok=True)
    device = diffusion.device
    digest = file_digest(checkpoint)
    total = diffusion.num_timesteps
    configs = sweep_configs(steps, etas, total, ddpm)
    noise = initial_noise(num_samples, diffusion.channels, diffusion.image_size[0], seed)
    rows = []
    for c in tqdm(configs, desc='sweep', unit='config'):
        key = cache_key(checkpoint=digest, n=num_samples, seed=seed, precision=precision, batch_size=batch_size,
                        device=str(device), extra=bool(extra_score), **c)
        cached = out_dir / 'cache' / f'{key}.json'
        if cached.is_file():
            rows.append(json.loads(cached.read_text()))
            continue
        images, seconds = timed_sample(diffusion, strategy=c['strategy'], steps=c['steps'], eta=c['eta'] or 0.0,
                                       num_samples=num_samples, batch_size=batch_size, seed=seed,
                                       precision=precision, noise=noise)
        if not images.isfinite().all():
            raise UserError(f'{config_label(c)} produced NaN images; the checkpoint or precision is broken')
        grid = out_dir / 'grids' / f'{grid_name(c["strategy"], c["steps"], c["eta"])}.png'
        save_grid(images[:grid_images], grid)
        row = dict(config=config_label(c), **c, nfe=nfe(c['strategy'], c['steps'], total),
                   seconds=seconds, seconds_per_image=seconds / num_samples, grid=str(grid.relative_to(out_dir)),
                   **evaluator.score(images), **(extra_score(images) if extra_score else {}))
        write_json(cached, row)
        rows.append(row)
    key = cache_key(kind='calibration', n=num_samples, seed=seed, image_size=evaluator.image_size,
                    reference=len(evaluator.reference), train=len(evaluator.train))
    cached = out_dir / 'cache' / f'{key}.json'
    if cached.is_file():
        calibration = json.loads(cached.read_text())
    else:
        calibration = evaluator.calibration(num_samples)
        write_json(cached, calibration)
    result = dict(checkpoint=str(checkpoint), checkpoint_sha256_16=digest, machine=machine_name(device),
                  device=str(device), precision=precision, num_samples=num_samples, batch_size=batch_size,
                  seed=seed, reference_images=len(evaluator.reference), train_images=len(evaluator.train),
                  rows=rows, calibration=calibration)
    write_outputs(result, out_dir)
    return result


def write_outputs(result, out_dir):
    out_dir = Path(out_dir)
    write_json(out_dir / 'comparison.json', result)
    calibration_rows = [dict(config=name, **scores) for name, scores in result['calibration'].items()]
    with atomic_path(out_dir / 'comparison.csv') as tmp:
        with open(tmp, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction='ignore', restval='')
            writer.writeheader()
            writer.writerows(result['rows'] + calibration_rows)
    with atomic_path(out_dir / 'comparison.md') as tmp:
        tmp.write_text(markdown_table(result))
    plot(result, out_dir / 'comparison.png')


def markdown_table(result):
    head = ('| config | NFE | s/image | FID (classifier) | IS | confidence | smallest class | KL to uniform '
            '| precision | recall | near-copies | flip-preferred |')
    lines = [f'N = {result["num_samples"]} samples per config, seed {result["seed"]}, {result["precision"]}, batch '
             f'{result["batch_size"]}, on {result["machine"]}; reference: {result["reference_images"]} MNIST test '
             'digits.', '', head, '|' + '---|' * (head.count('|') - 1)]
    for r in result['rows']:
        lines.append(f'| {r["config"]} | {r["nfe"]} | {r["seconds_per_image"]:.4f} | {score_cells(r)} |')
    for name, r in result['calibration'].items():
        lines.append(f'| *{name}* | – | – | {score_cells(r)} |')
    return '\n'.join(lines) + '\n'


def score_cells(r):
    return (f'{r["fid"]:.2f} | {r["inception_score"]:.2f} | {r["confidence"]:.3f} | {r["min_class_share"]:.3f} | '
            f'{r["class_kl_uniform"]:.3f} | {r["precision"]:.3f} | {r["recall"]:.3f} | {r["near_copy_share"]:.3f} | '
            f'{r.get("flip_preferred_share", float("nan")):.3f}')


def plot(result, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    ddim = [r for r in result['rows'] if r['strategy'] == 'ddim']
    ddpm = [r for r in result['rows'] if r['strategy'] == 'ddpm']
    floor = result['calibration']['real training digits (floor)']['fid']
    for ax, x_key, label in ((axes[0], 'nfe', 'NFE (Unet evaluations per image)'),
                             (axes[1], 'seconds_per_image', 'seconds per image')):
        for eta in sorted({r['eta'] for r in ddim}):
            pts = sorted((r[x_key], r['fid']) for r in ddim if r['eta'] == eta)
            ax.plot(*zip(*pts), marker='o', label=f'DDIM eta={eta}')
        for r in ddpm:
            ax.scatter([r[x_key]], [r['fid']], marker='*', s=200, color='black', zorder=5, label='DDPM (T steps)')
        ax.axhline(floor, ls='--', color='grey', label='real digits (floor)')
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.set_xlabel(label)
        ax.set_ylabel(f'FID in classifier features (N={result["num_samples"]})')
        ax.grid(True, which='both', alpha=0.3)
    axes[0].legend()
    fig.suptitle(f'DDPM vs DDIM on {result["machine"]}', fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format='png')
    plt.close(fig)
