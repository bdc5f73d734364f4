"""Catalog preprocessing job.

    python pipelines/preprocess.py --config pipelines/configs/default.yaml data.limit=500
    ray job submit --working-dir . -- python pipelines/preprocess.py data.catalog=/abs/styles.csv ...

Same as `moon-ray preprocess`; see moon_ray/catalog/ingest.py.
"""

import sys

from moon_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["preprocess", *sys.argv[1:]]))
