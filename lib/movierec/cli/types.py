"""The parser class of every command, and argument types that refuse out-of-range numbers.

The types make argparse print the usage and one line naming the flag, with exit status 2,
before any work starts (a port of 99999 used to reach uvicorn, a negative worker count Ray
Train).
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from typing import Any


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``--help`` shows each option's default, unless it is None or False (or already said)."""

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and _shows_default(action):
            # argparse prints no help line at all for an option without help text.
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if _shows_default(action) and "default" not in text.lower():
            text = f"{text} (default: %(default)s)"
        return text


def _shows_default(action: argparse.Action) -> bool:
    default = action.default  # by identity: 0 is a default worth showing, False is not
    return (bool(action.option_strings) and default is not None and default is not False
            and default != argparse.SUPPRESS)


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with :class:`DefaultsHelpFormatter`; its subcommands too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An ``int`` type accepting ``low`` to ``high`` (no upper bound when None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            span = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{value} is out of range: use {span}")
        return value

    parse.__name__ = "int"  # argparse names the type in "invalid int value"
    return parse


def positive_float(text: str) -> float:
    """A ``float`` greater than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value:g} is out of range: use a number above 0")
    return value
