"""Serving job: the Ray Serve deployments of /v1/embeddings, /v1/search, /v1/models, /healthz, /readyz, /metrics.

    python pipelines/serve.py [--model frozen|DIR] [--port 8000] [--config FILE] [key.sub=value ...]
    python pipelines/serve.py --build-index outputs/index-frozen      # = moon-ray index (pipelines/index.py)
    ray job submit --working-dir . -- python pipelines/serve.py --detach ray.address=auto

Same as `moon-ray serve`; see moon_ray/serve/app.py.
"""

import sys

from moon_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
