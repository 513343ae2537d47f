"""The ``movierec`` console script: builds the parser from the command groups and runs one.

Exit status: 0 done; 2 an error the user can fix (missing files, bad data, bad options, an
unknown run or version), printed as one line on stderr, never as a traceback
(``MOVIEREC_TRACEBACK=1`` shows it); 3 a "no" answer (drift found, a canary analysis
that rolls back, replayed requests that failed, a failed infrastructure check; a pipeline
that rolls a candidate back did its job and exits 0); 1 a pipeline run that failed
(its report says why) or a bug (the traceback is shown); 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import reprlib
import signal
import sys
import threading
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
from movierec.cli.types import Parser
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
USER_ERRORS = (FetchError, ParseError, DataValidationError, OSError, ValueError,
               ToolMissingError, RegistryError)
# MLflow's answer to an id that does not exist (checked by name: importing mlflow is slow).
_MLFLOW_NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"


def user_message(exc: BaseException) -> str | None:
    """The one line to print for an error the user can fix; None for anything else."""
    if isinstance(exc, ValidationError):
        # "epochs: Input should be greater than or equal to 1 (got 0)", one per problem.
        problems = [f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}"
                    + (f" (got {reprlib.repr(e['input'])})"
                       if not isinstance(e.get("input"), dict) else "")
                    for e in exc.errors()]
        return f"invalid {exc.title} settings: " + "; ".join(problems)
    mlflow_error = any(c.__name__ == "MlflowException" for c in type(exc).__mro__)
    if mlflow_error and getattr(exc, "error_code", None) == _MLFLOW_NOT_FOUND:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = os.environ.get("MLFLOW_TRACKING_URI") or "the local store"
        return (f"{first} (in MLflow at {where}; `movierec evaluate` lists recent runs, "
                "`movierec registry history` the versions)")
    if isinstance(exc, USER_ERRORS):
        return str(exc) or type(exc).__name__
    from movierec.training.tracking import tracking_unreachable  # noqa: PLC0415

    if tracking_unreachable(exc):
        where = os.environ.get("MLFLOW_TRACKING_URI") or "the tracking URI"
        return (f"MLflow at {where} is unreachable: start it (`movierec platform up`) or "
                "point MLFLOW_TRACKING_URI at a running server")
    return None


def build_parser() -> argparse.ArgumentParser:
    """The full parser; every command and subcommand has ``--help``."""
    parser = Parser(
        prog="movierec",
        description="movierec: personalized movie recommendation, from MovieLens to serving.")
    parser.add_argument("--version", action="version", version=f"movierec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in GROUPS:
        register(sub)
    return parser


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM (Kubernetes, Argo, ``kill``) ends a command as Ctrl+C does, cleanly."""
    del signum, frame
    raise KeyboardInterrupt("terminated (SIGTERM)")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; return the exit status.

    SIGTERM is turned into an interruption while the command runs, so what a command
    cleans up on Ctrl+C (a tracked run ends KILLED, not RUNNING forever) happens when a
    pod or workflow step is stopped too.
    """
    args = build_parser().parse_args(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        return int(args.run(args) or 0)
    except Exception as exc:
        message = user_message(exc)
        if message is None or os.environ.get("MOVIEREC_TRACEBACK") == "1":
            raise
        print(f"movierec: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(f"movierec: interrupted{f': {interrupt}' if str(interrupt) else ''}",
              file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
