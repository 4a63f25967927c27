"""Export the EMA Unet of a training checkpoint as safetensors plus its config JSON (what the repo ships).

    python -m ddpm_mnist.export results_mnist_small/model-10.pt pretrained/ddpm_mnist_small
"""
import argparse
import copy
from pathlib import Path

from .checkpoint import load_checkpoint, resolve_config, unet_weights
from .utils import atomic_path, run_cli, write_json


def export_ema(checkpoint, output_stem):
    """Write OUTPUT.safetensors (EMA Unet weights) and OUTPUT.json (model/diffusion config)."""
    from safetensors.torch import save_file
    ckpt = load_checkpoint(checkpoint)
    state = {k: v.contiguous() for k, v in unet_weights(ckpt, checkpoint, use_ema=True).items()}
    config = without_absolute_paths(copy.deepcopy(resolve_config(checkpoint, ckpt, state, {})))
    config['exported_from'] = dict(checkpoint=Path(checkpoint).name, step=ckpt.get('step'), weights='ema')
    if 'training' in config:
        config['provenance'] = provenance(ckpt, config)
    output_stem = Path(output_stem)
    output_stem.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output_stem.with_suffix('.safetensors')) as tmp:
        save_file(state, str(tmp))
    write_json(output_stem.with_suffix('.json'), config)
    return output_stem.with_suffix('.safetensors')


def provenance(ckpt, config):
    """What the weights came from, in words a reader can check: data, steps, images seen, time, machine."""
    t, data = config['training'], config.get('data', {})
    step = ckpt.get('step')
    return dict(training_set=data.get('source'), training_images=data.get('num_images'), steps=step,
                images_seen=step * t['train_batch_size'] * t['gradient_accumulate_every'] if step else None,
                wall_seconds=ckpt.get('wall_seconds'), machines=ckpt.get('machines'),
                versions=config.get('versions'), command=config.get('command'))


def without_absolute_paths(value):
    """The build machine's absolute paths mean nothing elsewhere: keep only the last component."""
    if isinstance(value, dict):
        return {k: without_absolute_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_absolute_paths(v) for v in value]
    if isinstance(value, str) and value.startswith('/'):
        return Path(value).name
    if isinstance(value, str) and ' /' in value:  # e.g. 'IDX files in /tmp/x'
        return ' '.join(Path(word).name if word.startswith('/') else word for word in value.split(' '))
    return value


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('checkpoint', help='training checkpoint model-N.pt')
    p.add_argument('output', help='output path without suffix; .safetensors and .json are written')
    args = p.parse_args(argv)
    path = export_ema(args.checkpoint, args.output)
    print(f'wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and {path.with_suffix(".json")}')


if __name__ == '__main__':
    run_cli(main)
