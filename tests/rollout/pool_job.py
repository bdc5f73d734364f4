"""The driver of a job that holds a rollout pool, as a joint run's driver does (tests/rollout/test_cli.py):
starts this job's named pool (torch engine, the tiny LM at MODEL_DIR) and generates with it until the
file STOP exists, then prints the pool's final size.

    python -m tests.rollout.pool_job MODEL_DIR STOP
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def main(model_dir: str, stop: str) -> int:
    import ray
    import torch

    from moon_ray.config import RayConfig
    from moon_ray.infrastructure.runtime import init_ray
    from moon_ray.rollout.base import SamplingConfig
    from moon_ray.rollout.control import create_pool, pool_name, run_key

    init_ray(RayConfig(progress=False))  # a job's driver: joins the cluster ($RAY_ADDRESS)
    pool = create_pool(("torch", {"model_dir": model_dir, "threads": 1}, 1, 0.25), {}, "moon-ray")
    print(f"pool up: {pool_name(run_key())}", flush=True)
    prompts = [torch.randn(4, 128) for _ in range(4)]
    while not Path(stop).exists():
        groups = ray.get(pool.generate.remote(prompts, SamplingConfig(n=2, max_tokens=4, seed=0)))
        assert len(groups) == len(prompts) and all(len(g) == 2 for g in groups)
        time.sleep(0.3)
    print(f"workers at the end: {ray.get(pool.status.remote())['workers']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
