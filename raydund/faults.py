"""Crash injection at named commit points (tests and chaos drills only).

A stage calls :func:`crash_point` at every point where a crash would leave the lake
between two states (before its first write, between two tables, before the run row,
after the lake commit and before tracking, during registration). Normally nothing
happens. When the environment variable ``RAYDUND_CRASH_AT`` names the point
(``probes.before_neuron_rankings``; several separated by commas), the process stops
there: :class:`InjectedCrash` is raised (a ``BaseException``, so no ``except
Exception`` on the way can swallow it), or, with ``RAYDUND_CRASH_MODE=exit``, the
process ends at once with status 137 as if killed (no ``finally`` runs).

:func:`seen` lists the points a process passed, so a test can check it covered every one.
"""

from __future__ import annotations

import os

CRASH_ENV = "RAYDUND_CRASH_AT"
MODE_ENV = "RAYDUND_CRASH_MODE"

_seen: set[str] = set()


class InjectedCrash(BaseException):
    """The process was asked to crash at this point (``RAYDUND_CRASH_AT``)."""


def crash_point(name: str) -> None:
    """Crash here when ``RAYDUND_CRASH_AT`` names ``name``; otherwise record the point and return."""
    _seen.add(name)
    wanted = os.environ.get(CRASH_ENV)
    if not wanted or name not in {w.strip() for w in wanted.split(",")}:
        return
    if os.environ.get(MODE_ENV) == "exit":
        os._exit(137)
    raise InjectedCrash(name)


def seen() -> set[str]:
    """Points this process has passed (for tests that check they covered every point)."""
    return set(_seen)


__all__ = ["CRASH_ENV", "InjectedCrash", "crash_point", "seen"]
