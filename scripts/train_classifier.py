"""Train the LeNet feature network used by the metrics and write pretrained/mnist_classifier.safetensors.

Offline: python3 scripts/train_classifier.py --raw_dir ../shared/data/mnist-full   (all 60,000 digits)
Online:  python3 scripts/train_classifier.py                                       (the same, via torchvision)
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_mnist.classifier import WEIGHTS, accuracy, save_classifier, train_classifier  # noqa: E402
from ddpm_mnist.data import load_split  # noqa: E402
from ddpm_mnist.utils import run_cli  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--raw_dir', '--raw-dir', dest='raw_dir', help='folder with the MNIST IDX files (offline); default: download via torchvision')
    p.add_argument('--root', default='./data', help='torchvision download folder (default: %(default)s)')
    p.add_argument('--epochs', type=int, default=4, help='training epochs (default: %(default)s)')
    p.add_argument('--seed', type=int, default=0, help='random seed (default: %(default)s)')
    p.add_argument('--output', default=str(WEIGHTS), help='weights file to write (default: %(default)s)')
    args = p.parse_args(argv)
    train_x, train_y = load_split('train', args.raw_dir, args.root)
    test_x, test_y = load_split('test', args.raw_dir, args.root)
    start = time.time()
    model = train_classifier(train_x, train_y, epochs=args.epochs, seed=args.seed)
    acc = accuracy(model, test_x, test_y)
    info = dict(test_accuracy=round(acc, 4), test_images=len(test_y), train_images=len(train_y),
                epochs=args.epochs, seed=args.seed, source=args.raw_dir or 'torchvision download',
                seconds=round(time.time() - start, 1), command=' '.join(['python3', 'scripts/train_classifier.py',
                                                                          *(argv or sys.argv[1:])]))
    save_classifier(model, args.output, info)
    print(f'test accuracy {acc:.4f} on {len(test_y)} images ({len(train_y)} training images, '
          f'{info["seconds"]} s); wrote {args.output}')


if __name__ == '__main__':
    run_cli(main)
