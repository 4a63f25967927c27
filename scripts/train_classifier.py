"""Train the LeNet feature network used by the metrics and write
ddpm_mnist/pretrained/mnist_classifier.safetensors, then
the MNIST test split's feature statistics and real-data floors beside it (ddpm_mnist/pretrained/mnist_test_features.*),
which let the metrics run with no MNIST on disk. Another dataset's feature network: --dataset NAME writes
ddpm_mnist/pretrained/NAME_classifier.safetensors, which the metrics of models trained on NAME use.

Offline: python3 scripts/train_classifier.py --raw_dir ../shared/data/mnist-full   (all 60,000 digits)
Online:  python3 scripts/train_classifier.py                                       (the same, via torchvision)
Statistics only, for the classifier already there: add --stats_only
"""
import argparse
from typing import Any, Sequence
import sys
import time
from pathlib import Path


from ddpm_mnist.cli.arguments import ArgumentParser, add_setting, add_data_root_arg, add_dataset_arg, add_raw_dir_arg
from ddpm_mnist.utils import run_cli


def main(argv: Sequence[str] | None = None) -> None:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arg(p)
    add_raw_dir_arg(p, 'folder with the dataset\'s raw files (offline; MNIST: its IDX files); default: download')
    add_data_root_arg(p)
    p.add_argument('--epochs', type=int, default=4, help='training epochs (default: %(default)s)')
    add_setting(p, 'seed', default=0, help='random seed (default: %(default)s)')
    p.add_argument('--arch', choices=['lenet', 'wide'], default='lenet',
                   help='lenet: the metrics\' feature network; wide: the second, independent one that scores the sweep '
                        'too (--second_classifier), trained e.g. with --seed 1 (default: %(default)s)')
    p.add_argument('--output', default=None,
                   help='weights file to write (default: ddpm_mnist/pretrained/mnist_classifier.safetensors, '
                        'ddpm_mnist/pretrained/mnist_classifier_wide.safetensors for --arch wide, '
                        'ddpm_mnist/pretrained/NAME_classifier.safetensors for --dataset NAME)')
    p.add_argument('--stats_only', action='store_true',
                   help='keep the classifier in --output; only rewrite the reference statistics beside it')
    args = p.parse_args(argv)
    from ddpm_mnist.evaluation.classifier import (SECOND_WEIGHTS, accuracy, classifier_path, load_classifier,
                                                  save_classifier, train_classifier)
    mnist = args.dataset == 'mnist'
    if args.stats_only and not mnist:
        p.error('--stats_only writes the shipped MNIST statistics; other datasets score against their own files')
    args.output = args.output or str(SECOND_WEIGHTS if args.arch == 'wide' and mnist else classifier_path(args.dataset))
    from ddpm_mnist.datasets import load_split
    train_x, train_y = load_split('train', args.raw_dir, args.data_root, args.dataset)
    test_x, test_y = load_split('test', args.raw_dir, args.data_root, args.dataset)
    stats_path = Path(args.output).with_name('mnist_test_features.safetensors')
    if args.stats_only:
        return write_all_stats(load_classifier(args.output), test_x, train_x, stats_path)
    start = time.time()
    model = train_classifier(train_x, train_y, epochs=args.epochs, seed=args.seed, arch=args.arch)
    acc = accuracy(model, test_x, test_y)
    info = dict(test_accuracy=round(acc, 4), test_images=len(test_y), train_images=len(train_y),
                epochs=args.epochs, seed=args.seed, arch=args.arch, source=args.raw_dir or 'download',
                dataset=args.dataset,
                seconds=round(time.time() - start, 1), command=' '.join(['python3', 'scripts/train_classifier.py',
                                                                          *(argv or sys.argv[1:])]))
    save_classifier(model, args.output, info)
    print(f'test accuracy {acc:.4f} on {len(test_y)} images ({len(train_y)} training images, '
          f'{info["seconds"]} s); wrote {args.output}')
    if args.arch == 'lenet' and mnist:  # the shipped statistics belong to the metrics' own MNIST feature network
        write_all_stats(model, test_x, train_x, stats_path)


def write_all_stats(model: Any, test_x: Any, train_x: Any, stats_path: Path) -> None:
    """The test split's feature statistics and floors for every training image size."""
    from ddpm_mnist.evaluation.reference import STATS_IMAGE_SIZES, stats_path_for, write_reference_stats
    for size in STATS_IMAGE_SIZES:
        floors = write_reference_stats(model, test_x, train_x, stats_path, image_size=size)
        print(f'wrote {stats_path_for(size, stats_path)} ({size} px); real-data floor FID by N: {floors}')


if __name__ == '__main__':
    run_cli(main)
