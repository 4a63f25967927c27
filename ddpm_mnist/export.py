"""Export the EMA Unet of a training checkpoint as safetensors plus its config JSON (what the repo ships).

    python -m ddpm_mnist.export runs/shipped60k/model-6.pt pretrained/ddpm_mnist_small
"""
import argparse

from .utils import run_cli


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('checkpoint', help='training checkpoint model-N.pt')
    p.add_argument('output', help='output path without suffix; .safetensors and .json are written')
    args = p.parse_args(argv)
    from .run_folder import export_ema
    path = export_ema(args.checkpoint, args.output)
    print(f'wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and {path.with_suffix(".json")}')


if __name__ == '__main__':
    run_cli(main)
