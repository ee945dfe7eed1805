"""The ``napari-wsl-al`` command line: one sub-command per module in ``napari_wsl_al.commands``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .core.errors import WslAlError

#: Sub-command modules; each defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args)``.
COMMAND_MODULES = (
    "napari_wsl_al.commands.demo",
    "napari_wsl_al.commands.info",
    "napari_wsl_al.commands.make_sample",
    "napari_wsl_al.commands.train_wsl",
    "napari_wsl_al.commands.pretrain_ssl",
    "napari_wsl_al.commands.infer",
    "napari_wsl_al.commands.suggest",
    "napari_wsl_al.commands.round",
    "napari_wsl_al.commands.labels",
    "napari_wsl_al.commands.simulate",
)


def _available_commands():
    for name in COMMAND_MODULES:
        try:
            yield importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="napari-wsl-al",
        description="Weakly-supervised localisation and active learning for whole-slide images.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _available_commands():
        command = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``napari-wsl-al`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except WslAlError as error:
        print(f"napari-wsl-al {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"napari-wsl-al {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
