"""The ``dinocell-core`` subcommands: one module per family, each with ``register(subparsers)``; heavy imports
(torch) happen inside the handlers so ``dinocell-core --help`` stays instant. :func:`main` also serves the demo,
which runs each step as the CLI command it prints."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from dinocell_core import __version__
from dinocell_core.config import ConfigError
from dinocell_core.errors import DinocellError
from dinocell_core.io.shards import AlreadyMerged

COMMAND_MODULES = [
    "dinocell_core.commands.data",
    "dinocell_core.commands.segment",
    "dinocell_core.commands.plate",
    "dinocell_core.commands.pretrain",
    "dinocell_core.commands.demo",
    "dinocell_core.commands.profile",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dinocell-core",
        description="DINOCell: DINOv3 pretraining on JUMP Cell Painting and distance-map cell segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"dinocell-core {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"dinocell-core: configuration error: {exc}", file=sys.stderr)
        return 2
    except AlreadyMerged as exc:
        print(f"dinocell-core: {exc}")
        return 0
    except (DinocellError, FileNotFoundError, NotADirectoryError, PermissionError, ValueError) as exc:
        logging.getLogger("dinocell_core").debug("command failed", exc_info=True)
        print(f"dinocell-core: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dinocell-core: interrupted", file=sys.stderr)
        return 130
