"""Ray job entrypoint: `raydund probe` (see `raydund probe --help`)."""

import sys

from raydund.cli import main

if __name__ == "__main__":
    sys.exit(main(["probe", *sys.argv[1:]]))
