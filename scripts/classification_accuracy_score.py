"""Classification Accuracy Score (Ravuri & Vinyals 2019): a classifier trained only on generated digits (6,000 per
class from the conditional model) and tested on the 10,000 real MNIST test digits, beside the same classifier (same
architecture, epochs and seed) trained on the 60,000 real training digits.

  python3 scripts/classification_accuracy_score.py --raw_dir ../shared/data/mnist-full --guidance_scale 2
Writes assets/classification_accuracy_score.{json,md}. Generating 60,000 digits is the long part, hence a fast
sampler by default (UniPC, 10 steps; the time it took is in the JSON). The generated digits are kept in --cache_dir
one digit at a time and each of the two classifiers' accuracy is saved as it is measured; the same command resumes.
"""
import argparse
import sys
import time
from pathlib import Path
from typing import Sequence


from ddpm_mnist.settings import at_least
from ddpm_mnist.cli.arguments import ArgumentParser, add_setting, add_mnist_args
from ddpm_mnist.runtime import BatchCache, SavedMeasurements
from ddpm_mnist.utils import atomic_path, file_digest, shown_path, write_json


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--checkpoint', default=None,
                   help='conditional model (default: ddpm_mnist/pretrained/ddpm_mnist_conditional.safetensors)')
    add_mnist_args(p)
    add_setting(p, 'per_class', rule=at_least(10), type=int, default=6000, help='generated digits per class')
    add_setting(p, 'guidance_scale', default=1.0, help='guidance scale W')
    add_setting(p, 'strategy', default='unipc', help='sampler')
    add_setting(p, 'steps', rule=at_least(1), type=int, default=10, help='sampler steps')
    add_setting(p, 'epochs', rule=at_least(1), type=int, default=4, help='classifier epochs, both classifiers')
    add_setting(p, 'seed', default=0, help='seed of x_T and of both classifiers')
    p.add_argument('--output', default='assets/classification_accuracy_score', help='output stem')
    p.add_argument('--cache_dir', default='runs/classification_accuracy_score_cache',
                   help='where the generated digits are kept, one file per digit, so a killed run resumes '
                        '(default: %(default)s; safe to delete)')
    args = p.parse_args(argv)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    import ddpm_mnist
    from ddpm_mnist.evaluation.classifier import accuracy, train_classifier
    from ddpm_mnist.model.conditional import NUM_DIGITS
    from ddpm_mnist.datasets import load_split
    from ddpm_mnist.settings import SHIPPED_CONDITIONAL
    from ddpm_mnist.evaluation.sweep import cache_key

    model = ddpm_mnist.load_model(args.checkpoint or SHIPPED_CONDITIONAL)
    train_x, train_y = load_split('train', args.raw_dir, args.data_root)
    test_x, test_y = load_split('test', args.raw_dir, args.data_root)
    n = args.per_class * NUM_DIGITS
    out = Path(args.output)
    setup = dict(checkpoint=shown_path(model.path), checkpoint_sha256_16=file_digest(model.path),
                 per_class=args.per_class, guidance_scale=args.guidance_scale, strategy=args.strategy,
                 steps=args.steps, epochs=args.epochs, seed=args.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = SavedMeasurements(out.with_suffix('.json'), setup, log=lambda line: print(line, flush=True))

    def trained_on_generated() -> dict[str, float]:
        # one digit at a time, each kept in the cache, so an interrupted run resumes digit by digit
        cache = BatchCache(Path(args.cache_dir) / cache_key(kind='classification_accuracy_score', **setup))
        start, blocks = time.time(), []
        for digit in range(NUM_DIGITS):
            block = cache.get(digit, size=args.per_class)
            if block is None:
                block = ddpm_mnist.sample(model, strategy=args.strategy, steps=args.steps, n=args.per_class,
                                          seed=args.seed * NUM_DIGITS + digit, digits=[digit],
                                          guidance_scale=args.guidance_scale)
                cache.put(digit, block)
            blocks.append(block)
        generated = torch.cat(blocks)
        labels = torch.arange(NUM_DIGITS).repeat_interleave(args.per_class)
        seconds = time.time() - start
        print(f'generated {cache.computed} digits in {seconds:.0f} s ({n - cache.computed} from {cache.folder})',
              flush=True)
        classifier = train_classifier(generated, labels.numpy(), epochs=args.epochs, seed=args.seed)
        return dict(accuracy=accuracy(classifier, test_x, test_y), sampling_seconds=round(seconds, 1),
                    sampled_here=cache.computed)

    def trained_on_real() -> dict[str, float]:
        return dict(accuracy=accuracy(train_classifier(train_x, train_y, epochs=args.epochs, seed=args.seed),
                                      test_x, test_y))

    generated = saved.get('trained_on_generated', trained_on_generated)
    real = saved.get('trained_on_real', trained_on_real)
    result = saved.record(sampling_seconds=generated['sampling_seconds'],
                          accuracy_trained_on_generated=generated['accuracy'],
                          accuracy_trained_on_real=real['accuracy'], real_training_digits=len(train_y),
                          command='python3 scripts/classification_accuracy_score.py ' + ' '.join(argv or sys.argv[1:]))
    text = (f'Classification Accuracy Score: a LeNet ({args.epochs} epochs, seed {args.seed}) trained on {n:,} '
            f'generated digits ({args.strategy}-{args.steps}, W = {args.guidance_scale:g}) scores '
            f'**{100 * result["accuracy_trained_on_generated"]:.2f} %** on the 10,000 real test digits; trained on the '
            f'{len(train_y):,} real training digits it scores {100 * result["accuracy_trained_on_real"]:.2f} %.\n')
    write_json(out.with_suffix('.json'), result)
    with atomic_path(out.with_suffix('.md')) as tmp:
        tmp.write_text(text)
    print(text)


if __name__ == '__main__':
    from ddpm_mnist.utils import run_cli
    run_cli(main)
