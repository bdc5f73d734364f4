"""The rollout pool as a named actor: its name, starting it, finding it from another process, and the
control program that `moon-ray rollout status|scale` runs inside the cluster.

Name. A training run's pool is the actor `rollout-pool-<KEY>` in the run's Ray namespace (ray.namespace),
KEY being the Ray job's submission id when the run is a Ray job (`moon-ray submit train`, `ray job
submit`), else Ray's own job id of the driver (`moon-ray train ray.address=auto` on a head). Two jobs on
one cluster thus never share a pool, and `moon-ray rollout status JOB_ID` finds a submitted job's pool by
the id `moon-ray submit` printed. The pool lives as long as its run (not detached): once the job ends
there is no pool to find.

    python -m moon_ray.rollout.control status [--key KEY]       # inside the cluster (a control job)
    python -m moon_ray.rollout.control scale N [--key KEY]

The control program prints one line, `@@moon-ray-rollout {json}`: {"ok": true, ...} with the pool's
status (and the scale's result), or {"ok": false, "error": "..."} when there is no such pool or the pool
refused (a refused scale changes nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

PREFIX = "rollout-pool-"
MARK = "@@moon-ray-rollout"


class ControlError(RuntimeError):
    """No pool to act on, or a request the pool refused; the job is left as it was."""


def run_key() -> str:
    """This driver's key: the Ray job's submission id when it runs as a Ray job, else Ray's job id."""
    import ray

    config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    submission = (config.get("metadata") or {}).get("job_submission_id")
    return submission or ray.get_runtime_context().get_job_id()


def pool_name(key: str) -> str:
    return f"{PREFIX}{key}"


def create_pool(args: tuple, kwargs: dict, namespace: str, key: str | None = None, wait_s: float = 30.0):
    """Start RolloutPool(*args, **kwargs) named for this run in `namespace`. A name still held by this
    driver's previous pool (a pipeline that trains twice; the old one was just killed) is waited for."""
    from moon_ray.infrastructure.timing import Stopwatch
    from moon_ray.rollout.pool import RolloutPool

    name = pool_name(key or run_key())
    watch = Stopwatch()
    while True:
        try:
            return RolloutPool.options(name=name, namespace=namespace).remote(*args, **kwargs)
        except ValueError as e:
            if "already taken" not in str(e) or watch.elapsed() > wait_s:
                raise ValueError(f"{e} (a rollout pool of this run is still alive after {wait_s:g} s)") from None
            time.sleep(0.5)


def list_pools() -> list[dict]:
    """[{"key", "name", "namespace"}] of every rollout pool alive in the cluster."""
    from ray.util import list_named_actors

    return [{"key": a["name"][len(PREFIX):], "name": a["name"], "namespace": a["namespace"]}
            for a in list_named_actors(all_namespaces=True) if a["name"].startswith(PREFIX)]


def find_pool(key: str | None = None):
    """(handle, key) of the pool of run `key`, or of the only pool in the cluster when key is None."""
    import ray

    pools = list_pools()
    keys = ", ".join(sorted(p["key"] for p in pools)) or "none"
    if key is not None:
        match = [p for p in pools if p["key"] == key]
        if not match:
            raise ControlError(f"no rollout pool for job {key!r} (pools running: {keys}); the job must be a joint "
                               "run (rollout.enabled=true) that is still running")
        chosen = match[0]
    elif len(pools) == 1:
        chosen = pools[0]
    elif not pools:
        raise ControlError("no rollout pool runs on this cluster (a joint run, rollout.enabled=true, starts one)")
    else:
        raise ControlError(f"{len(pools)} rollout pools run on this cluster ({keys}); name the job")
    return ray.get_actor(chosen["name"], namespace=chosen["namespace"]), chosen["key"]


def control(action: str, key: str | None = None, count: int | None = None) -> dict:
    """status / scale on a pool (this process is connected to the cluster); ControlError when refused."""
    import ray

    from moon_ray.rollout.pool import PoolError

    pool, key = find_pool(key)
    out: dict = {"key": key}
    if action == "scale":
        try:
            out["scaled"] = ray.get(pool.scale.remote(count))
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, PoolError):
                raise ControlError(str(cause)) from None
            raise
    out["status"] = ray.get(pool.status.remote())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moon_ray.rollout.control")
    parser.add_argument("action", choices=("status", "scale"))
    parser.add_argument("count", nargs="?", type=int)
    parser.add_argument("--key", help="the run's key (a job's submission id); default: the only pool")
    args = parser.parse_args(argv)
    import logging

    import ray

    ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), logging_level=logging.ERROR, log_to_driver=False)
    try:
        if args.action == "scale" and args.count is None:
            raise ControlError("scale needs the number of actors")
        answer = {"ok": True, **control(args.action, args.key, args.count)}
    except ControlError as e:
        answer = {"ok": False, "error": str(e)}
    print(f"{MARK} {json.dumps(answer)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
