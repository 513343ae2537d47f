"""The ``movierec`` console script: builds the parser from the command groups and runs one.

Errors the user can fix (missing files, bad data, bad options) are printed as one clear
line on stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from movierec import __version__
from movierec.cli import data as data_cli
from movierec.cli import evaluate as evaluate_cli
from movierec.cli import infra as infra_cli
from movierec.cli import lifecycle as lifecycle_cli
from movierec.cli import registry as registry_cli
from movierec.cli import serve as serve_cli
from movierec.cli import train as train_cli
from movierec.data.movielens import ParseError
from movierec.data.sources import FetchError
from movierec.data.validate import DataValidationError
from movierec.infra.commands import ToolMissingError
from movierec.registry.mlflow_registry import RegistryError

# Each group module exposes ``register(subparsers)``; later groups are appended here.
GROUPS: list[Callable[[argparse._SubParsersAction], None]] = [data_cli.register,
                                                                train_cli.register,
                                                                train_cli.register_tune,
                                                                evaluate_cli.register,
                                                                registry_cli.register,
                                                                serve_cli.register,
                                                                lifecycle_cli.register,
                                                                lifecycle_cli.register_monitor,
                                                                lifecycle_cli.register_demo,
                                                                infra_cli.register]
USER_ERRORS = (FetchError, ParseError, DataValidationError, FileNotFoundError, FileExistsError,
               NotADirectoryError, ValidationError, ValueError, ToolMissingError,
               RegistryError)


def build_parser() -> argparse.ArgumentParser:
    """The full parser; every command and subcommand has ``--help``."""
    parser = argparse.ArgumentParser(
        prog="movierec",
        description="movierec: personalized movie recommendation, from MovieLens to serving.")
    parser.add_argument("--version", action="version", version=f"movierec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in GROUPS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except USER_ERRORS as exc:
        print(f"movierec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("movierec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
