"""Ray job entrypoint: `raydund transfer` (see `raydund transfer --help`)."""

import sys

from raydund.cli import main

if __name__ == "__main__":
    sys.exit(main(["transfer", *sys.argv[1:]]))
