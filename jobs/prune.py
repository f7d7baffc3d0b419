"""Ray job entrypoint: `raydund prune` (see `raydund prune --help`)."""

import sys

from raydund.cli import main

if __name__ == "__main__":
    sys.exit(main(["prune", *sys.argv[1:]]))
