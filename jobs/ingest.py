"""Ray job entrypoint: ingest a catalog corpus into the lake (`raydund ingest --help`)."""

import sys

from raydund.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
