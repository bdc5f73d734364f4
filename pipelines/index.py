"""Index job: embed the catalog once with a Ray Data actor pool and write the index every Serve replica loads.

    python pipelines/index.py [--model frozen|DIR] [--out DIR] [--config FILE] [key.sub=value ...]
    moon-ray submit index --wait -- --model outputs/train-joint/export ray.use_custom_resources=true

Same as `moon-ray index`; see moon_ray/eval/index_job.py.
"""

import sys

from moon_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["index", *sys.argv[1:]]))
