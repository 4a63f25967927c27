"""The README's editing figure: one row per operation of edit_digits.py, on real MNIST test digits.

  inpaint      masked input (bottom half grey) and its RePaint completion, for four digits
  sdedit       input and its SDEdit result (strength 0.5, DDIM-50)
  invert       input and its DDIM inversion round trip (K = 50)
  interpolate  eight frames of the spherical path between two seeds' x_T (DDIM-50)

  python3 scripts/edit_figure.py --raw_dir ../shared/data/mnist-full            # writes assets/editing.png
Every draw is seeded (--seed); the digits are the test split's first ones of four different labels.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence


from ddpm_mnist.settings import at_least
from ddpm_mnist.cli.arguments import ArgumentParser, add_setting, add_mnist_args

ROWS = ('inpaint', 'sdedit', 'invert', 'interpolate')


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--checkpoint', default=None, help='model to edit with (default: the shipped model)')
    add_mnist_args(p)
    add_setting(p, 'inpaint_steps', rule=at_least(1), type=int, default=None,
                help='DDIM steps of the fast RePaint variant (default: the DDPM chain, RePaint as published)')
    add_setting(p, 'seed', default=0, help='seed of every noise draw (default: %(default)s)')
    p.add_argument('--output', default='assets/editing.png', help='figure to write (default: %(default)s)')
    args = p.parse_args(argv)
    return args


def chosen_digits(labels: Any, count: int = 4) -> list[int]:
    """Indices of the first test digits with `count` different labels."""
    seen, chosen = set(), []
    for i, label in enumerate(labels):
        if int(label) not in seen:
            seen.add(int(label))
            chosen.append(i)
        if len(chosen) == count:
            break
    return chosen


def edit_rows(model: Any, digits: Any, *, seed: int, inpaint_steps: int | None) -> dict[str, Any]:
    """{operation: images (8, 1, H, W) in [0, 1]}: inputs and results side by side, or the frames."""
    import torch

    from ddpm_mnist.sampling import editing

    from ddpm_mnist.sampling.images import named_mask
    from ddpm_mnist.sampling.loop import initial_noise
    from ddpm_mnist.sampling.registry import SamplerSettings
    diffusion, size = model.diffusion, model.image_size
    ddim = SamplerSettings.resolve('ddim', total_timesteps=model.timesteps)  # DDIM-50, or every step of a shorter chain
    steps = ddim.steps
    mask = named_mask('bottom', size)
    inpainted, _ = editing.inpaint(diffusion, digits, mask, steps=inpaint_steps,
                                   eta=1.0 if inpaint_steps is None else 0.0, seed=seed, batch_size=len(digits))
    shown = digits * (1 - mask) + 0.5 * mask
    sdedited, _ = editing.sdedit(diffusion, digits, strength=0.5, settings=ddim, seed=seed, batch_size=len(digits))
    inverted = editing.invert(diffusion, digits, steps=steps, batch_size=len(digits)).reconstruction
    ends = [initial_noise(1, diffusion.channels, size, s).to(diffusion.device) for s in (seed, seed + 1)]
    frames = editing.interpolate(diffusion, *ends, frames=2 * len(digits), steps=steps)

    def pairs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.stack((a, b), dim=1).flatten(0, 1)
    return dict(inpaint=pairs(shown, inpainted), sdedit=pairs(digits, sdedited), invert=pairs(digits, inverted),
                interpolate=frames)


def draw(rows: dict[str, Any], path: Path, *, titles: dict[str, str]) -> None:
    """The rows as one labelled figure, written atomically."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from ddpm_mnist.utils import atomic_path
    columns = max(len(images) for images in rows.values())
    fig, axes = plt.subplots(len(rows), columns, figsize=(columns * 0.9 + 1.6, len(rows) * 1.05), squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c in range(columns):
            ax = axes[r][c]
            ax.set_xticks([]), ax.set_yticks([])
            if c < len(images):
                ax.imshow(images[c, 0].numpy(), cmap='gray', vmin=0, vmax=1)
            else:
                ax.axis('off')
        axes[r][0].set_ylabel(titles[name], rotation=0, ha='right', va='center', fontsize=8)
    fig.tight_layout(pad=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format='png', dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    from ddpm_mnist.api import load_model
    from ddpm_mnist.evaluation.classifier import as_training_resolution
    from ddpm_mnist.datasets import load_split
    model = load_model(args.checkpoint)
    test, labels = load_split('test', args.raw_dir, args.data_root)
    digits = as_training_resolution(test[chosen_digits(labels)], model.image_size)
    rows = edit_rows(model, digits, seed=args.seed, inpaint_steps=args.inpaint_steps)
    inpaint = 'RePaint' if args.inpaint_steps is None else f'RePaint, DDIM-{args.inpaint_steps}'
    titles = dict(inpaint=f'inpaint\n(input, {inpaint})', sdedit='SDEdit 0.5\n(input, result)',
                  invert='DDIM inversion\n(input, round trip)',
                  interpolate=f'interpolate\n(seeds {args.seed} to {args.seed + 1})')
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    draw(rows, output, titles=titles)
    print(f'wrote {output}')


if __name__ == '__main__':
    from ddpm_mnist.utils import run_cli
    run_cli(main)
