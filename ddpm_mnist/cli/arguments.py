"""The command line's flags: the project's ArgumentParser (one-line errors, --quiet, every flag's rule checked right
after parsing) and `add_setting`, which makes a flag from its one declaration in settings.SETTINGS; the flag groups
several commands share (model and diffusion, data location). Imports no torch."""
from __future__ import annotations

import argparse
import re
from typing import Any

from ddpm_mnist.settings import DIGITS, MODEL_FLAGS, RULES, SETTINGS, Rule, check_value
from ddpm_mnist.utils import BadValue


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's one-line errors: a bad or unknown flag prints one line and a pointer to --help,
    not the whole usage (exit status 2, as argparse's own). Every command also takes --quiet, applied here and
    not passed on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # a value that starts with a negative number is a value, lists included (--noise_levels -1.2,1.2): argparse
        # takes only a lone number for one, and anything else that starts with "-" for an unknown flag
        self._negative_number_matcher = re.compile(r'^-\.?\d[\d.eE+-]*(,[-+]?\.?\d[\d.eE+-]*)*$')
        self.add_argument('--quiet', action='store_true', default=argparse.SUPPRESS,
                          help='no progress bars (results, warnings and errors still print)')

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        from ddpm_mnist.runtime import set_quiet
        set_quiet(False)  # each command line decides afresh (a sub-command's parser runs inside its parent's)
        parsed, rest = super().parse_known_args(args, namespace)
        if parsed.__dict__.pop('quiet', False):
            set_quiet(True)
        for action in self._actions:  # each flag's rule: its own (add_setting), else the declared one of its name
            rule = getattr(action, 'rule', None) or RULES.get(action.dest)
            check_value(f'--{action.dest}', getattr(parsed, action.dest, None), rule)
        return parsed, rest

    def error(self, message: str) -> None:
        self.exit(2, f'error: {message} (see {self.prog} --help)\n')


def add_setting(container: Any, name: str, *, rule: Rule | None = None, **kwargs: Any) -> argparse.Action:
    """--name on a parser or argument group, from its declaration in SETTINGS (help, type or choices, rule);
    keyword arguments add to it (default=...) or say it in a command's own words (help=...). A setting of one
    command alone passes its help, type and rule here. ArgumentParser checks the rule after parsing."""
    declared = SETTINGS.get(name)
    if declared is not None:
        kwargs = {**{key: value for key, value in dict(help=declared.help, type=declared.type,
                                                       choices=declared.choices).items() if value is not None},
                  **kwargs}
        rule = rule or declared.rule
    if kwargs.get('default') is not None and 'default' not in kwargs.get('help', 'default'):
        kwargs['help'] += ' (default: %(default)s)'
    action = container.add_argument(f'--{name}', **kwargs)
    action.rule = rule
    return action


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared by training and inference; None means 'from the preset, config or checkpoint'."""
    g = parser.add_argument_group('model and diffusion (default: from the preset, config.json or checkpoint)')
    for name in MODEL_FLAGS:
        add_setting(g, name)


def add_raw_dir_arg(parser: argparse.ArgumentParser, help_text: str) -> None:
    """--raw_dir (alias --raw-dir): a folder of MNIST IDX files, for offline use."""
    parser.add_argument('--raw_dir', '--raw-dir', dest='raw_dir', help=help_text)


def add_dataset_arg(parser: argparse.ArgumentParser) -> None:
    """--dataset: which entry of datasets.DATASETS (default mnist)."""
    from ddpm_mnist.datasets import DATASETS
    parser.add_argument('--dataset', choices=list(DATASETS), default='mnist',
                        help='mnist, fashion_mnist (the same IDX format), cifar10 (its binary archive) or folder (any '
                             'folder of images, one subfolder per class for labels; needs --raw_dir) '
                             '(default: %(default)s)')


def add_data_root_arg(parser: argparse.ArgumentParser) -> None:
    """--data_root (alias --root): where torchvision downloads and caches MNIST."""
    parser.add_argument('--data_root', '--root', dest='data_root', default='./data',
                        help='folder where torchvision downloads and caches MNIST (default: %(default)s)')


RAW_DIR_HELP = 'MNIST IDX folder (offline), e.g. ../shared/data/mnist-full; default: torchvision download'


def add_mnist_args(parser: argparse.ArgumentParser, raw_dir_help: str = RAW_DIR_HELP) -> None:
    """--raw_dir and --data_root: where a script finds MNIST (offline IDX files, or torchvision's cache)."""
    add_raw_dir_arg(parser, raw_dir_help)
    add_data_root_arg(parser)


def parse_digits(text: str) -> list[int]:
    """--digits '7' or '0,3,9' -> [7] or [0, 3, 9] (distinct digits 0-9); a one-line error for anything else."""
    try:
        digits = [int(part) for part in text.split(',')]
    except ValueError:
        digits = None
    if not DIGITS.ok(digits):
        raise BadValue(f'--digits {text} is not allowed: use distinct digits 0-9, comma-separated (e.g. 7 or 0,3,9)')
    return digits
