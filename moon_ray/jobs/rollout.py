"""`moon-ray rollout status|scale`: a running job's rollout pool, from wherever its job server answers.

    moon-ray rollout status [JOB_ID] [--address URL] [--json]
    moon-ray rollout scale N [JOB_ID] [--address URL] [--timeout S]

JOB_ID is the submission id `moon-ray submit` printed (or, for a run started on a head with
`moon-ray train ray.address=auto`, the key `moon-ray rollout status` lists); without it, the only pool on
the cluster. --address, the token and Ray's errors are handled as for `moon-ray jobs` (client.py).

How it reaches the pool: the pool is a named actor of the running job (moon_ray/rollout/control.py), so
the command runs a short control job on the cluster, `python -m moon_ray.rollout.control ...`, with the
target job's own Python and runtime env (its uploaded working_dir: the same code), reads its one-line
answer and deletes it. That works for a local `ray start` cluster and a remote one alike, through the job
server only. Bad requests (N < 1, more actors than the cluster can ever place, no such job, a job without
a pool, a job that has ended) get an error that names the limit, and the job is left as it was.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shlex
import sys
import time
from pathlib import Path

from moon_ray.infrastructure.timing import Stopwatch
from moon_ray.jobs.client import TERMINAL, connect, quiet_ray_logs, translate_errors
from moon_ray.jobs.errors import JobsError, JobsTimeout
from moon_ray.jobs.interpreter import delete_ended_job
from moon_ray.rollout.control import MARK

_ADDRESS_HELP = "job server (default: $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS, http://127.0.0.1:8265)"
_JOB_HELP = "the job's submission id (default: the only rollout pool on the cluster)"


def add_rollout_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="rollout_action", required=True, metavar="{status,scale}")
    status = sub.add_parser("status", help="actors, weights version, restarts of a running job's pool",
                            description="actors, weights version, restarts of a running job's rollout pool")
    status.add_argument("job_id", nargs="?", metavar="JOB_ID", help=_JOB_HELP)
    status.add_argument("--json", action="store_true", help="print the pool's status as JSON")
    scale = sub.add_parser("scale", help="grow or shrink a running job's pool to N actors",
                           description="grow or shrink a running job's rollout pool to N actors; new actors "
                                       "load the current weights before they generate")
    scale.add_argument("count", type=int, metavar="N", help="actors wanted (>= 1)")
    scale.add_argument("job_id", nargs="?", metavar="JOB_ID", help=_JOB_HELP)
    scale.add_argument("--timeout", type=float, default=900.0, metavar="S",
                       help="give up waiting for the answer after S s (the pool gives up on actors it cannot "
                            "start within rollout.start_timeout_s)")
    for q in (status, scale):
        q.add_argument("--address", metavar="URL", help=_ADDRESS_HELP)


def target(client, job_id: str | None) -> tuple[str, dict, str | None]:
    """(the Python, the runtime env, the pool key) for the control job: those of the job named, or of a
    running job when none is named (its pool is then the only one on the cluster)."""
    if job_id is None:
        running = [j for j in client.list_jobs() if j.status.value == "RUNNING"
                   and not (j.metadata or {}).keys() & {"moon_ray_probe", "moon_ray_control"}]
        if not running:
            raise JobsError("no job is running on the cluster; a rollout pool lives in a running joint "
                            "training job (moon-ray submit train ... rollout.enabled=true)")
        info = running[0]
    else:
        try:
            info = client.get_job_info(job_id)
        except RuntimeError:
            raise JobsError(f"no job {job_id!r} on the cluster (`moon-ray jobs list` shows its jobs)") from None
        if info.status.value != "RUNNING":
            raise JobsError(f"job {job_id} is {info.status.value}: its rollout pool lives only while it runs")
    words = shlex.split(info.entrypoint or "python")
    python = words[0] if Path(words[0]).name.startswith("python") else "python"
    return python, dict(info.runtime_env or {}), job_id


def run_control(client, python: str, runtime_env: dict, args: list[str], timeout: float) -> dict:
    """Run `python -m moon_ray.rollout.control ARGS` as a job; its answer (the MARK line's JSON)."""
    job_id = f"moon-ray-rollout-{secrets.token_hex(4)}"
    entrypoint = shlex.join([python, "-m", "moon_ray.rollout.control", *args])
    client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=job_id,
                      metadata={"moon_ray_control": "rollout"})
    watch, status = Stopwatch(), "PENDING"
    try:
        while status not in TERMINAL:
            if watch.elapsed() > timeout:
                raise JobsTimeout(f"no answer from the pool within {timeout:g} s (control job {job_id})")
            time.sleep(0.5)
            status = client.get_job_status(job_id).value
        logs = client.get_job_logs(job_id)
    finally:
        if status in TERMINAL:
            delete_ended_job(client, job_id)
        else:
            client.stop_job(job_id)
    for line in reversed(logs.splitlines()):
        if line.startswith(MARK + " "):
            return json.loads(line[len(MARK) + 1:])
    tail = "\n".join(logs.splitlines()[-15:])
    raise JobsError(f"the control job {status} without an answer; its last lines:\n{tail}")


def describe(answer: dict) -> str:
    s = answer["status"]
    limit = "no limit" if s["placement_limit"] is None else f"at most {s['placement_limit']} on this cluster"
    need = ", ".join(f"{k} {v:g}" for k, v in s["resources"].items() if v)
    lines = [f"rollout pool of job {answer['key']}: {s['workers']} {s['engine']} actors ({limit}; each {need or 'nothing'}), "
             f"weights version {s['version']}, restarts {s['restarts']}/{s['max_restarts']}, "
             f"groups generated {s['generated_groups']}, re-queued {s['requeued_groups']}"]
    for a in s["actors"]:
        lines.append(f"  pid {a['pid']:<8} node {a['node'][:12]}  version {a['version']:<5} "
                     f"in flight {a['inflight_groups']:<3} up {a['up_s']:.0f} s")
    for e in s["events"][-5:]:
        details = " ".join(f"{k}={v}" for k, v in e.items() if k not in ("t", "event"))
        lines.append(f"  {time.strftime('%H:%M:%S', time.localtime(e['t']))} {e['event']} {details}")
    return "\n".join(lines)


def cli_rollout(args) -> int:
    action = args.rollout_action
    if action == "scale" and args.count < 1:
        print(f"moon-ray rollout scale: error: a rollout pool needs at least 1 actor, asked for {args.count}; "
              "nothing was changed", file=sys.stderr)
        return 2
    try:
        client, address, source = connect(args.address)
        with quiet_ray_logs(), translate_errors(address, source):
            python, runtime_env, key = target(client, args.job_id)
            control = [action, *([str(args.count)] if action == "scale" else []), *(["--key", key] if key else [])]
            answer = run_control(client, python, runtime_env, control, getattr(args, "timeout", 300.0))
    except (JobsError, KeyboardInterrupt) as e:
        if isinstance(e, KeyboardInterrupt):
            return 130
        print(f"moon-ray rollout {action}: error: {e}", file=sys.stderr)
        return 124 if isinstance(e, JobsTimeout) else 2
    if not answer["ok"]:
        print(f"moon-ray rollout {action}: error: {answer['error']}", file=sys.stderr)
        return 1
    if action == "scale":
        scaled = answer["scaled"]
        print(f"scaled the rollout pool of job {answer['key']} from {scaled['before']} to {scaled['workers']} actors")
    print(json.dumps(answer["status"], indent=2) if getattr(args, "json", False) else describe(answer))
    return 0
