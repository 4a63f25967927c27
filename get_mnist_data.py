"""Get MNIST (or Fashion-MNIST, CIFAR-10, any folder of images) and write it as a folder of PNG images (plus
labels.csv and dataset.json) for train_ddpm_mnist.py."""
import argparse
from typing import Sequence
from pathlib import Path

from ddpm_mnist.cli.arguments import ArgumentParser, add_data_root_arg, add_dataset_arg, add_raw_dir_arg, add_setting
from ddpm_mnist.utils import run_cli


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__)
    add_dataset_arg(p)
    p.add_argument('--split', choices=['train', 'test', 'all'], default='train',
                   help='which split to write (default: train, as the original; all = train then test; an image '
                        'folder\'s test split is every 10th image)')
    p.add_argument('--output', default=None,
                   help='folder to write the PNGs, labels.csv and dataset.json into (default: '
                        './data/mnist_image_folder for MNIST, ./data/NAME_image_folder otherwise)')
    add_data_root_arg(p)
    add_raw_dir_arg(p, 'work offline: read the raw files from this folder instead of downloading: the four IDX '
                       'files (.gz or not; e.g. ../shared/data/mnist-full), the CIFAR-10 binary batches or their '
                       'archive, or the images of --dataset folder')
    add_setting(p, 'image_size', default=None,
                help='side of the square images written for --dataset folder (centre crop, then resize) '
                     '(default: 32)')
    p.add_argument('--force', action='store_true',
                   help='rebuild the output folder even if it is already complete')
    args = p.parse_args(argv)
    if args.dataset == 'folder' and not args.raw_dir:
        p.error('--dataset folder reads the images of --raw_dir FOLDER; give it')
    if args.image_size is not None and args.dataset != 'folder':
        p.error(f'--image_size applies to --dataset folder only; {args.dataset} is written at its own size')
    args.output = args.output or f'./data/{args.dataset}_image_folder'
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    from ddpm_mnist.data import folder_is_complete, write_image_folder
    from ddpm_mnist.datasets import dataset_entry, folder_classes, load_split
    from ddpm_mnist.utils import remove_stale_temporaries
    remove_stale_temporaries(Path(args.output).parent)  # a killed earlier run's half-written folder
    if folder_is_complete(args.output) and not args.force:
        print(f'{args.output} is already complete; nothing to do (use --force to rebuild)')
        return
    entry = dataset_entry(args.dataset)
    splits = ['train', 'test'] if args.split == 'all' else [args.split]
    data = {s: load_split(s, args.raw_dir, args.data_root, args.dataset, args.image_size) for s in splits}
    source = f'{entry.title} from {args.raw_dir}' if args.raw_dir else f'{entry.title} download'
    classes = folder_classes(args.raw_dir) if args.dataset == 'folder' else entry.classes
    count = write_image_folder(args.output, data, source=source, force=args.force, dataset=args.dataset,
                               classes=classes)
    print(f'wrote {count} images to {args.output}')


if __name__ == '__main__':
    run_cli(main)
