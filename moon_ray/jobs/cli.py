"""`moon-ray submit` and `moon-ray jobs`: their arguments and what they run.

    moon-ray submit preprocess --address http://HEAD:8265 --wait data.limit=500
    moon-ray submit train --config pipelines/configs/joint.yaml ray.use_custom_resources=true
    moon-ray jobs status|logs|stop JOB_ID [--address URL] [--follow]
    moon-ray jobs list [--address URL]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from moon_ray.jobs.client import (
    DEFAULT_ADDRESS,
    connect,
    quiet_ray_logs,
    report,
    resolve_address,
    translate_errors,
    wait_for_job,
)
from moon_ray.jobs.entrypoint import build_entrypoint, build_runtime_env
from moon_ray.jobs.errors import JobsError, JobsTimeout
from moon_ray.jobs.interpreter import check_python, diagnose

_ADDRESS_HELP = f"job server (default: $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS, {DEFAULT_ADDRESS})"
_SUBMIT_OPTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--address", {"metavar": "URL", "help": _ADDRESS_HELP}),
    ("--config", {"metavar": "FILE", "help": "YAML config for the pipeline (pipelines/configs/*.yaml)"}),
    ("--wait", {"action": "store_true", "help": "wait for the end, streaming the logs; exit 0 only if "
                                                "SUCCEEDED"}),
    ("--no-follow", {"action": "store_true", "help": "with --wait: no log stream (last lines shown on "
                                                     "failure)"}),
    ("--timeout", {"type": float, "metavar": "S", "help": "with --wait: give up after S s (exit 124; the job "
                                                          "keeps running)"}),
    ("--requirements", {"metavar": "FILE", "help": "pip requirements for the job (runtime_env pip)"}),
    ("--env", {"action": "append", "default": [], "metavar": "KEY=VALUE", "help": "job env var, repeatable"}),
    ("--working-dir", {"metavar": "URI", "help": "use this working_dir instead of uploading the repository "
                                                 "(local:///path on every node, s3://.../x.zip, ...)"}),
    ("--paths", {"choices": ("absolute", "keep"), "default": "absolute",
                 "help": "absolute: rewrite relative config paths for the job (default); keep: as given"}),
    ("--python", {"metavar": "PATH", "help": "the Python on the cluster that runs the job (default: `python` "
                                             "on the cluster's PATH; checked before submitting)"}),
    ("--no-check", {"action": "store_true", "help": "submit without first checking that the cluster's Python "
                                                    "has moon-ray's requirements (a probe job of a few s)"}),
    ("--submission-id", {"metavar": "ID", "help": "the job's id (default: generated)"}),
    ("--dry-run", {"action": "store_true", "help": "print the entrypoint and runtime env; submit nothing"}),
)


def add_submit_args(p: argparse.ArgumentParser) -> None:
    for flag, kwargs in _SUBMIT_OPTIONS:
        p.add_argument(flag, **kwargs)
    p.add_argument("pipeline", help="pipelines/<PIPELINE>.py: preprocess, train, eval, ...")
    p.add_argument("rest", nargs=argparse.REMAINDER, metavar="OVERRIDE",
                   help="dotted overrides (data.limit=500); the options above may follow PIPELINE too; "
                        "anything else, or after --, goes to the pipeline script verbatim")


def _split_rest(tokens: Sequence[str]) -> tuple[list[str], list[str]]:
    """What follows PIPELINE -> (submit options, pipeline arguments); `--` ends the options."""
    takes_value = {flag: kw.get("action") != "store_true" for flag, kw in _SUBMIT_OPTIONS}
    takes_value.update({"-h": False, "--help": False})
    options, rest, i = [], [], 0
    while i < len(tokens):
        token, flag = tokens[i], tokens[i].split("=", 1)[0]
        if token == "--":
            rest.extend(tokens[i + 1:])
            break
        if flag not in takes_value:
            rest.append(token)
        elif takes_value[flag] and "=" not in token and i + 1 < len(tokens):
            options += [token, tokens[i + 1]]
            i += 1
        else:
            options.append(token)
        i += 1
    return options, rest


def _fail(command: str, error: BaseException) -> int:
    if isinstance(error, KeyboardInterrupt):
        print(f"\nmoon-ray {command}: interrupted (a submitted job keeps running)", file=sys.stderr)
        return 130
    print(f"moon-ray {command}: error: {error}", file=sys.stderr)
    return 124 if isinstance(error, JobsTimeout) else 2


def cli_submit(args) -> int:
    options, rest = _split_rest(args.rest)
    parser = argparse.ArgumentParser(prog="moon-ray submit", description="Submit a pipeline as a Ray job.")
    if "-h" in options or "--help" in options:
        add_submit_args(parser)
        parser.print_help()
        return 0
    for flag, kwargs in _SUBMIT_OPTIONS:
        parser.add_argument(flag, **kwargs)
    parser.parse_args(options, namespace=args)
    try:
        python = args.python or "python"
        entrypoint = build_entrypoint(args.pipeline, args.config, rest, paths=args.paths, python=python)
        runtime_env = build_runtime_env(working_dir=args.working_dir, requirements=args.requirements,
                                        env=args.env)
        if args.dry_run:
            plan = {"address": resolve_address(args.address), "entrypoint": entrypoint,
                    "runtime_env": runtime_env}
            print(json.dumps(plan, indent=2))
            return 0
        client, address, source = connect(args.address)
        with quiet_ray_logs(), translate_errors(address, source):
            if not (args.no_check or args.requirements):  # a pip runtime env brings a Python of its own
                chosen, note = check_python(client, runtime_env["env_vars"], args.python)
                if note:
                    print(note, file=sys.stderr, flush=True)
                if chosen != python:
                    entrypoint = build_entrypoint(args.pipeline, args.config, rest, paths=args.paths,
                                                  python=chosen)
            job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env,
                                       submission_id=args.submission_id,
                                       metadata={"moon_ray_pipeline": args.pipeline})
            _print_submitted(job_id, address, entrypoint)
            if not args.wait:
                return 0
            return report(client, job_id, follow=not args.no_follow, timeout=args.timeout)
    except (JobsError, KeyboardInterrupt) as e:
        return _fail("submit", e)


def _print_submitted(job_id: str, address: str, entrypoint: str) -> None:
    where = "" if address == DEFAULT_ADDRESS else f" --address {address}"
    print(f"submitted job {job_id} to {address}\n  entrypoint: {entrypoint}\n"
          f"  follow: moon-ray jobs logs {job_id} --follow{where}\n"
          f"  status: moon-ray jobs status {job_id}{where}\n  stop:   moon-ray jobs stop {job_id}{where}",
          flush=True)


def add_jobs_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="jobs_action", required=True, metavar="{status,logs,stop,list}")
    helps = {"status": "state, message and times of a job", "logs": "a job's logs (--follow: until it ends)",
             "stop": "ask a running job to stop", "list": "every job the cluster knows"}
    for name, help_text in helps.items():
        q = sub.add_parser(name, help=help_text, description=help_text)
        q.add_argument("--address", metavar="URL", help=_ADDRESS_HELP)
        if name != "list":
            q.add_argument("job_id", metavar="JOB_ID", help="the submission id printed by `moon-ray submit`")
        if name == "logs":
            q.add_argument("--follow", "-f", action="store_true",
                           help="stream until the job ends; exit 0 only if it SUCCEEDED")
            q.add_argument("--timeout", type=float, metavar="S", help="with --follow: stop after S seconds")


def _when(ms: int | None) -> str:
    """A job's start or end time (Ray's epoch milliseconds) as local date and time."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def _status(client, args) -> int:
    info = client.get_job_info(args.job_id)
    took = f"{(info.end_time - info.start_time) / 1000:.1f} s" if info.end_time and info.start_time else "-"
    problem = diagnose(info.message or "", info.entrypoint) if info.status.value == "FAILED" else None
    message = problem[0] if problem else info.message or "-"
    print(f"{args.job_id}  {info.status.value}\n  message:    {message}\n"
          f"  entrypoint: {info.entrypoint}\n  started:    {_when(info.start_time)}\n"
          f"  ended:      {_when(info.end_time)}\n  duration:   {took}")
    if problem:
        print(problem[1], file=sys.stderr)
    return 0


def _logs(client, args) -> int:
    if args.follow:
        return 0 if wait_for_job(client, args.job_id, follow=True, timeout=args.timeout) == "SUCCEEDED" else 1
    print(client.get_job_logs(args.job_id), end="")
    return 0


def _stop(client, args) -> int:
    if client.stop_job(args.job_id):
        print(f"stop requested for {args.job_id}")
    else:
        print(f"{args.job_id} is not running ({client.get_job_status(args.job_id).value})")
    return 0


def _list(client, args) -> int:
    jobs = sorted(client.list_jobs(), key=lambda j: j.start_time or 0)
    print(f"{'JOB ID':<28} {'STATUS':<10} {'STARTED':<19}  ENTRYPOINT")
    for job in jobs:
        entry = job.entrypoint if len(job.entrypoint) <= 70 else job.entrypoint[:67] + "..."
        job_id = job.submission_id or job.job_id
        print(f"{job_id:<28} {job.status.value:<10} {_when(job.start_time):<19}  {entry}")
    return 0


_JOB_ACTIONS = {"status": _status, "logs": _logs, "stop": _stop, "list": _list}


def cli_jobs(args) -> int:
    try:
        client, address, source = connect(args.address)
        with quiet_ray_logs(), translate_errors(address, source):
            return _JOB_ACTIONS[args.jobs_action](client, args)
    except (JobsError, KeyboardInterrupt) as e:
        return _fail(f"jobs {args.jobs_action}", e)
