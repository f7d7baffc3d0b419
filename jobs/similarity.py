"""Ray job entrypoint: `raydund similarity` (see `raydund similarity --help`)."""

import sys

from raydund.cli import main

if __name__ == "__main__":
    sys.exit(main(["similarity", "--no-progress", *sys.argv[1:]]))
