"""Ray job entrypoint: the README demo (`raydund demo --help`)."""

import sys

from raydund.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
