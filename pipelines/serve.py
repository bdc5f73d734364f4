"""Serving job: the Ray Serve deployment of /v1/embeddings, /v1/search, /v1/models and /healthz.

    python pipelines/serve.py [--model frozen|DIR] [--port 8000] [--config FILE] [key.sub=value ...]
    python pipelines/serve.py --build-index outputs/serve/index-frozen serve.index_limit=2000
    ray job submit --working-dir . -- python pipelines/serve.py --detach ray.address=auto

Same as `moon-ray serve`; see moon_ray/serve/app.py.
"""

import sys

from moon_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
