"""``python -m raydund.cli``: the same as the ``raydund`` command."""

from raydund.cli import entry

entry()
