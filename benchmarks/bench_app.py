"""Seconds each action of the page (app.py) takes on its defaults, the models warm (each action run once first):
what docs/app.md quotes. Needs the app extra (pip install '.[app]').

  python3 benchmarks/bench_app.py
"""
import argparse
import time
from typing import Sequence

import numpy as np

from ddpm_mnist.cli.arguments import ArgumentParser


def drawn_bar() -> dict:
    """What the page's canvas sends for one vertical stroke."""
    canvas = np.zeros((280, 280, 4), np.uint8)
    canvas[60:220, 130:150] = (20, 20, 20, 255)
    return {'background': None, 'layers': [canvas], 'composite': canvas}


def main(argv: Sequence[str] | None = None) -> None:
    ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    from ddpm_mnist.cli import app
    from ddpm_mnist.runtime import machine_name, set_quiet
    import torch
    set_quiet(True)
    canvas = drawn_bar()
    actions = [('Generate: DDIM-25, 16 digits', lambda: app.generate()),
               ('Generate: conditional, digit 7, W 1.25', lambda: app.generate('conditional', 'ddim', 25, 0, 0, 16, '7',
                                                                              1.25)),
               ('Compare: DDIM, UniPC, DPM-Solver++(2M), 10 steps, 9 digits each',
                lambda: app.compare(['ddim', 'unipc', 'dpmpp_2m'], 10, 0, 9)),
               ('Complete: RePaint on 25 DDIM steps, 5 resamples', lambda: app.complete(canvas)),
               ('SDEdit: strength 0.6, DDIM-25', lambda: app.sdedit(canvas)),
               ('Interpolate: 8 frames of DDIM-25', lambda: app.interpolate())]
    print(f'the page\'s actions on their defaults, {machine_name(torch.device("cpu"))}, torch threads '
          f'{torch.get_num_threads()}\n\n| action | seconds |\n|---|---|')
    for name, action in actions:
        action()  # the models loaded, the solvers imported
        started = time.perf_counter()
        action()
        print(f'| {name} | {time.perf_counter() - started:.2f} |', flush=True)


if __name__ == '__main__':
    main()
