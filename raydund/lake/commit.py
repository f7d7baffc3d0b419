"""Commits: optimistic-concurrency retries, row filters, conforming data to a table's schema."""

from __future__ import annotations

import logging
import os
import random
import time

import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException, CommitStateUnknownException
from pyiceberg.expressions import And, EqualTo, In

log = logging.getLogger(__name__)

#: Attempts of one commit that loses an optimistic-concurrency race (or meets a locked SQLite catalog).
COMMIT_ATTEMPTS = 12


def _retryable(exc: BaseException) -> bool:
    """A lost optimistic-concurrency race, or SQLite busy with another writer."""
    if isinstance(exc, CommitFailedException):
        return True
    text = str(exc).lower()
    return type(exc).__name__ == "OperationalError" and ("locked" in text or "busy" in text)


def commit_with_retry(action, what: str, attempts: int = COMMIT_ATTEMPTS, on_retry=None):
    """Run ``action()`` (which must reload the table and redo its whole commit) until it commits.

    Iceberg commits are optimistic: a writer whose base snapshot moved loses with
    ``CommitFailedException`` and nothing of its attempt is visible. Retrying from a
    fresh table load is then safe. Backoff is exponential with jitter (seeded by the
    process id, so concurrent writers spread out).

    Parameters
    ----------
    action : callable
        Loads the table, builds and commits the change; returns its result.
    what : str
        For the log.
    attempts : int
        Tries before giving up (the last error is raised).
    on_retry : callable, optional
        Called with the exception before each retry (counting, tests).
    """
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except CommitStateUnknownException:
            raise  # the commit may have landed: retrying could apply it twice
        except Exception as exc:
            if not _retryable(exc) or attempt == attempts:
                raise
            if on_retry is not None:
                on_retry(exc)
            delay = min(2.0, 0.02 * 2 ** attempt) * (0.5 + rng.random())
            log.info("%s: concurrent commit (%s); retry %d of %d in %.2f s",
                     what, type(exc).__name__, attempt, attempts - 1, delay)
            time.sleep(delay)
    raise RuntimeError("unreachable")


def condition(where: dict):
    """An Iceberg row filter from ``{column: value or list of values}``."""
    parts = [In(k, list(v)) if isinstance(v, (list, tuple)) else EqualTo(k, v) for k, v in where.items()]
    if not parts:
        raise ValueError("a scope needs at least one column")
    return parts[0] if len(parts) == 1 else And(*parts)


def _release_arrow_memory() -> None:
    """Hand the Arrow memory pool's free pages back to the OS (its allocator keeps them otherwise)."""
    try:
        pa.default_memory_pool().release_unused()
    except AttributeError:  # pragma: no cover - old pyarrow
        pass


def _conform(data: pa.Table, schema: pa.Schema) -> pa.Table:
    """``data`` in the table's column order and types; columns it lacks become nulls."""
    columns = [data.column(f.name).cast(f.type) if f.name in data.column_names else pa.nulls(data.num_rows, f.type)
               for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)
