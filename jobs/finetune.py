"""Ray job entrypoint: `raydund finetune` (see `raydund finetune --help`)."""

import sys

from raydund.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
