"""Ray job entrypoint: `raydund cluster` (see `raydund cluster --help`)."""

import sys

from raydund.cli import main

if __name__ == "__main__":
    sys.exit(main(["cluster", *sys.argv[1:]]))
