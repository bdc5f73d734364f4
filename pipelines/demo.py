"""The end-to-end demo (the README's main job).

    python pipelines/demo.py [--fast]
    ray job submit --working-dir . -- python pipelines/demo.py --fast

Same as `moon-ray demo`; see moon_ray/demo.py.
"""

import sys

from moon_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
