"""Get MNIST and write it as a folder of PNG images (plus labels.csv) for train_ddpm_mnist.py."""
import argparse
from typing import Sequence
from pathlib import Path

from ddpm_mnist.settings import ArgumentParser, add_data_root_arg, add_raw_dir_arg
from ddpm_mnist.utils import run_cli


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__)
    p.add_argument('--split', choices=['train', 'test', 'all'], default='train',
                   help='which MNIST split to write (default: train, as the original; all = train then test)')
    p.add_argument('--output', default='./data/mnist_image_folder',
                   help='folder to write the PNGs, labels.csv and dataset.json into (default: %(default)s)')
    add_data_root_arg(p)
    add_raw_dir_arg(p, 'work offline: read the four IDX files (.gz or not) from this folder instead of '
                       'downloading, e.g. ../shared/data/mnist-full')
    p.add_argument('--force', action='store_true',
                   help='rebuild the output folder even if it is already complete')
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    from ddpm_mnist.data import download_split, folder_is_complete, read_raw_split, write_image_folder
    from ddpm_mnist.utils import remove_stale_temporaries
    remove_stale_temporaries(Path(args.output).parent)  # a killed earlier run's half-written folder
    if folder_is_complete(args.output) and not args.force:
        print(f'{args.output} is already complete; nothing to do (use --force to rebuild)')
        return
    splits = ['train', 'test'] if args.split == 'all' else [args.split]
    if args.raw_dir:
        data = {s: read_raw_split(args.raw_dir, s) for s in splits}
        source = f'IDX files in {args.raw_dir}'
    else:
        data = {s: download_split(args.data_root, s) for s in splits}
        source = 'torchvision.datasets.MNIST download'
    count = write_image_folder(args.output, data, source=source, force=args.force)
    print(f'wrote {count} images to {args.output}')


if __name__ == '__main__':
    run_cli(main)
