"""Training job (contrastive; joint contrastive + GRPO with configs/joint.yaml).

    python pipelines/train.py --config pipelines/configs/train.yaml
    ray job submit --working-dir . -- python pipelines/train.py train.steps=300 ...

Same as `moon-ray train`; see moon_ray/train/driver.py.
"""

import sys

from moon_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
