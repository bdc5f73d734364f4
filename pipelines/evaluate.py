"""Evaluation job: a model or baseline on the held-out split of the preprocessed catalog.

    python pipelines/evaluate.py --model frozen [--config pipelines/configs/default.yaml] [key.sub=value ...]
    python pipelines/evaluate.py --compare outputs/eval/frozen outputs/eval/random
    ray job submit --working-dir . -- python pipelines/evaluate.py --model /abs/export data.output_dir=/abs/catalog

Same as `moon-ray eval`; see moon_ray/eval/evaluate.py.
"""

import sys

from moon_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
