"""What every command shares: settings, the read-only lake, the name check, flags, output."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
from collections.abc import Callable
from pathlib import Path

#: Arguments that name something in the lake, and the kind of name each is (see ``raydund.lake.check_name``).
NAME_ARGS = {"corpus": "corpus", "model": "model", "split": "split", "splits": "split", "stats_split": "split",
             "cluster_split": "split", "unit": "unit"}
#: Commands whose names are checked before any work; the arguments that are sources, not names
#: (a catalog entry, folder or hub id: checked once resolved), or lists checked by their config
#: (extract's ``--unit word,mlp``).
NAME_COMMANDS = {"extract": ("model", "unit"), "similarity": (), "cluster": (), "probe": (), "transfer": (),
                 "finetune": ("model",), "explore": ()}


def settings():
    """The prepared settings of a command that writes (folders created)."""
    from raydund.config import Settings

    return Settings.from_env().prepare()


def read_lake():
    """Settings and the lake of a read-only command: nothing is created; no lake is one clear error."""
    from raydund.config import Settings
    from raydund.lake import Lake

    found = Settings.from_env()
    return found, Lake(found, create=False).require()


def check_names(args) -> None:
    """Apply the one name rule to every lake name a command was given, before it does anything."""
    if args.command not in NAME_COMMANDS:
        return
    from raydund.lake import check_name

    for attr, kind in NAME_ARGS.items():
        value = getattr(args, attr, None)
        if value is None or attr in NAME_COMMANDS[args.command]:
            continue
        for name in value if isinstance(value, list | tuple) else [value]:
            check_name(kind, name)


# -- parsers --------------------------------------------------------------------------------
def add_verbosity(parser: argparse.ArgumentParser, default=False) -> None:
    """``-v`` / ``-q``; a subcommand's copy leaves them unset unless given (``default=SUPPRESS``)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="also raydund's INFO lines (what each stage is doing) and Ray's own")
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="only results and errors: no warnings, no progress bars")


def command(sub, name: str, help_text: str, func: Callable, *, json_output: bool = True,
            populate: Callable | None = None, resumes: bool = False, **kwargs) -> argparse.ArgumentParser:
    """A subcommand: ``-v``/``-q``, ``--json`` where it prints results, options added by ``populate`` on first use.

    ``resumes``: an interrupted run of this command continues when re-run (its interrupt
    message says so).
    """
    parser = sub.add_parser(name, help=help_text, description=help_text, populate=populate, **kwargs)
    add_verbosity(parser, default=argparse.SUPPRESS)
    if json_output:
        parser.add_argument("--json", action="store_true", help="print the results as one JSON document")
    parser.set_defaults(func=func, resumes=resumes)
    return parser


def add_no_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def progress(args) -> bool:
    """Whether to show progress bars (not with ``--no-progress``, ``-q`` or ``--json``)."""
    return not (getattr(args, "no_progress", False) or getattr(args, "quiet", False) or getattr(args, "json", False))


# -- output ---------------------------------------------------------------------------------
def _plain(value):
    """JSON for what results hold: NumPy arrays and scalars, dataclasses, paths, times, frames."""
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if hasattr(value, "to_dicts"):  # polars DataFrame
        return value.to_dicts()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, datetime.date | datetime.datetime):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value)
    return str(value)


def _finite(value):
    """NaN and infinities as ``null`` (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def to_json(data) -> str:
    """One JSON document: ``data`` made plain (NumPy, dataclasses, frames), NaN as null."""
    return json.dumps(_finite(json.loads(json.dumps(data, default=_plain))), allow_nan=False)


def emit(args, data, text: str | Callable[[], str] | None = None) -> None:
    """Print ``data`` as JSON under ``--json``, else ``text`` (a string or a function making it)."""
    if getattr(args, "json", False):
        print(to_json(data))
    elif text is not None:
        print(text() if callable(text) else text)
