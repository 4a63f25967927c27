"""A local web page for the shipped models: generate digits with any sampler, compare samplers on the same noise,
complete or SDEdit a digit you draw, interpolate between two seeds. Needs the app extra: pip install '.[app]'.

  python3 app.py                 # http://127.0.0.1:7860
  python3 app.py --port 8000
The same file runs a hosted demo unchanged (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT are read as the defaults).
"""
import argparse
import os
from typing import Sequence

from ddpm_mnist.cli.arguments import ArgumentParser, add_setting
from ddpm_mnist.settings import Rule
from ddpm_mnist.utils import UserError, run_cli


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--host', default=os.environ.get('GRADIO_SERVER_NAME', '127.0.0.1'),
                   help='address to serve on (default: %(default)s, this machine only)')
    add_setting(p, 'port', rule=Rule(lambda v: 1 <= v <= 65535, 'a port number from 1 to 65535'), type=int,
                default=int(os.environ.get('GRADIO_SERVER_PORT', 7860)), help='port to serve on (default: %(default)s)')
    args = p.parse_args(argv)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        from ddpm_mnist.cli.app import build_page
        page = build_page()
    except ModuleNotFoundError as err:
        if err.name != 'gradio':
            raise
        raise UserError("the page needs Gradio: pip install '.[app]' (or pip install gradio)") from None
    page.launch(server_name=args.host, server_port=args.port)


if __name__ == '__main__':
    run_cli(main)
