"""Ray job entrypoint: extract activations into the lake.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/extract.py --model minilm --corpus conll2000 --split dev

Arguments are those of `raydund extract --help`. Locations come from the job's
environment (RAYDUND_HOME, RAYDUND_CATALOG_URI, RAYDUND_WAREHOUSE, MLFLOW_TRACKING_URI):
they must be absolute, since the job runs in a temporary copy of the working dir.
"""

import sys

from raydund.cli import main

if __name__ == "__main__":
    sys.exit(main(["extract", "--no-progress", *sys.argv[1:]]))
