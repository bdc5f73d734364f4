"""Ray Jobs: submit a pipeline to a Ray cluster, then follow, inspect or stop it.

    moon-ray submit preprocess --address http://HEAD:8265 --wait data.limit=500
    moon-ray submit train --config pipelines/configs/joint.yaml ray.use_custom_resources=true
    moon-ray jobs status|logs|stop JOB_ID [--address URL] [--follow]
    moon-ray jobs list [--address URL]

A job runs `python pipelines/<name>.py [--config FILE] [overrides]` (`eval` runs evaluate.py) with this
repository as its working_dir: uploaded without .venv, outputs, .git and caches, and first on the job's
PYTHONPATH, so the cluster runs the code of this checkout.

Paths. Config paths are relative to the caller's directory, but a job runs in a copy of the repository
elsewhere. So the resolved config's paths (defaults, --config file, overrides) are rewritten: keys named
`catalog` or `*_dir` always, others when they name something that exists here (`*_path` / `*_file` keys,
values with a `/`; a model id `org/name` is left alone). Inside the uploaded tree a path becomes
repo-relative (it travels with the job), elsewhere absolute: right for a local `ray start` cluster or
storage mounted at the same path on every node; other clusters need cluster paths as overrides, and
`--paths keep` sends values untouched. A --config file outside the uploaded tree is inlined.

Address: --address, else $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS, else http://127.0.0.1:8265.

Token authentication (Ray >= 2.52; `ray start` turns it on with RAY_AUTH_MODE=token or when a token
exists): the job server wants `Authorization: Bearer <token>`, which Ray's client sends only under
RAY_AUTH_MODE=token. moon-ray finds the token as Ray does ($RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH,
~/.ray/auth_token) and sends it unless RAY_AUTH_MODE=disabled. `ray get-auth-token` on a head prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fnmatch
import json
import logging
import os
import re
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from moon_ray.config import load_config, parse_override, to_dict, to_overrides
from moon_ray.infrastructure.runtime import DEFAULT_ENV

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
ALIASES = {"eval": "evaluate"}  # pipeline name -> script stem, where they differ
# Left out of the uploaded working_dir (gitignore-style patterns relative to the repository root).
EXCLUDES = (".git", ".venv", "venv", "outputs", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache",
            ".mypy_cache", ".cache", "*.egg-info", "bench/results")
# The job's env_vars (the caller's values win). moon_ray.infrastructure.runtime.init_ray passes DEFAULT_ENV to ray.init
# as well, and Ray refuses a driver runtime_env that repeats a job's key unless told to merge them.
JOB_ENV = {**DEFAULT_ENV, "PYTHONUNBUFFERED": "1", "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1"}
DIR_KEY = re.compile(r"(^|_)(catalog|dir)$")  # config leaves that always hold a path, existing or not
PATH_KEY = re.compile(r"(^|_)(path|file)$")  # config leaves that hold a path when it exists here
OVERRIDE = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)*=")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
QUIET_LOGGERS = ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk",
                 "ray._private.runtime_env.packaging", "ray._private.runtime_env.working_dir")


class JobsError(Exception):
    """A user error (unknown pipeline, unreachable cluster, refused token): printed without a traceback."""


class JobsTimeout(JobsError):
    """--timeout passed before the job finished; the job keeps running."""


# ---------------------------------------------------------------------------------------- pipelines
def available_pipelines(root: Path = ROOT) -> list[str]:
    """Pipeline names: pipelines/<name>.py, with evaluate.py listed as `eval`."""
    reverse = {stem: name for name, stem in ALIASES.items()}
    scripts = (root / "pipelines").glob("*.py")
    return sorted(reverse.get(p.stem, p.stem) for p in scripts if not p.stem.startswith("_"))


def pipeline_script(name: str, root: Path = ROOT) -> str:
    """'preprocess' -> 'pipelines/preprocess.py' (relative to the repository root); 'eval' -> evaluate.py."""
    stem = name.removeprefix("pipelines/").removesuffix(".py")
    stem = ALIASES.get(stem, stem)
    if re.fullmatch(r"\w+", stem) and (root / "pipelines" / f"{stem}.py").is_file():
        return f"pipelines/{stem}.py"
    known = ", ".join(available_pipelines(root)) or f"none: no pipelines/*.py under {root}"
    raise JobsError(f"unknown pipeline {name!r} (available: {known})")


# -------------------------------------------------------------------------------------------- paths
def shipped(path: Path, root: Path = ROOT) -> bool:
    """Whether `path` (absolute) is inside the uploaded working_dir: under root and not excluded."""
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        return False
    parts = rel.split("/")
    for pattern in EXCLUDES:
        if "/" in pattern and (rel == pattern or rel.startswith(pattern + "/")):
            return False
        if "/" not in pattern and any(fnmatch.fnmatch(part, pattern) for part in parts):
            return False
    return True


def localise(key: str, value: Any, root: Path, cwd: Path) -> str | None:
    """How config leaf `key` should reach the job: a repo-relative or absolute path, or None (as is)."""
    if not isinstance(value, str) or not value or "://" in value or os.path.isabs(value):
        return None
    leaf = key.rsplit(".", 1)[-1]
    if not DIR_KEY.search(leaf):
        if not (PATH_KEY.search(leaf) or "/" in value) or not (cwd / value).exists():
            return None
    path = (cwd / value).resolve()
    new = path.relative_to(root).as_posix() if shipped(path, root) else str(path)
    return None if new == value else new


def _override(key: str, value: Any) -> str:
    node: Any = value
    for part in reversed(key.split(".")):
        node = {part: node}
    return to_overrides(node)[0]


def _flatten(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def localise_overrides(overrides: Sequence[str], cfg: Any, root: Path, cwd: Path) -> list[str]:
    """Rewrite path values of `overrides`, then add one override per other relative path of `cfg`."""
    out, given = [], set()
    for item in overrides:
        key, value = parse_override(item)
        new = localise(key, value, root, cwd)
        out.append(item if new is None else _override(key, new))
        given.add(key)
    for key, value in _flatten(to_dict(cfg)):
        new = None if key in given else localise(key, value, root, cwd)
        if new is not None:
            out.append(_override(key, new))
    return out


def config_args(config: str | None, root: Path, cwd: Path) -> tuple[list[str], list[str]]:
    """(`--config FILE` for the job, overrides inlined from a config file that is not uploaded)."""
    if config is None:
        return [], []
    path = (cwd / config).resolve()
    if shipped(path, root):
        return ["--config", path.relative_to(root).as_posix()], []
    return [], to_overrides(yaml.safe_load(path.read_text()) or {})


def build_entrypoint(pipeline: str, config: str | None = None, args: Sequence[str] = (), *,
                     root: Path = ROOT, cwd: Path | None = None, paths: str = "absolute") -> str:
    """The job's shell command; the config is resolved (and validated) here, not on the cluster."""
    cwd = Path(cwd or os.getcwd()).resolve()
    script = pipeline_script(pipeline, root)
    overrides = [a for a in args if OVERRIDE.match(a)]  # the rest (e.g. --compare DIR) goes as it is
    extra = [a for a in args if not OVERRIDE.match(a)]
    cfg = load_config(None if config is None else cwd / config, overrides)
    cfg_args, inlined = config_args(config, root, cwd)
    overrides = inlined + overrides
    if paths == "absolute":
        overrides = localise_overrides(overrides, cfg, root, cwd)
        extra = [a if a.startswith("-") else localise("path", a, root, cwd) or a for a in extra]
    return shlex.join(["python", script, *cfg_args, *overrides, *extra])


# ------------------------------------------------------------------------------------ runtime env
def read_requirements(path: str) -> list[str]:
    """Requirement lines of a pip requirements file (comments dropped); nested -r/-c files are refused."""
    lines = [line.split(" #")[0].strip() for line in Path(path).read_text().splitlines()]
    reqs = [line for line in lines if line and not line.startswith("#")]
    nested = [r for r in reqs if r.startswith(("-r", "-c", "--requirement", "--constraint"))]
    if nested:
        raise JobsError(f"{path}: {nested[0]!r} names another file, which the cluster cannot read; "
                        "list those requirements in this file")
    return reqs


def build_runtime_env(root: Path = ROOT, *, working_dir: str | None = None,
                      requirements: str | None = None, env: Sequence[str] = ()) -> dict[str, Any]:
    """working_dir (the repository, or a URI the cluster can read), env_vars, optional pip."""
    env_vars = {key: os.environ.get(key, value) for key, value in JOB_ENV.items()}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise JobsError(f"--env {item!r}: expected KEY=VALUE")
        env_vars[key] = value
    runtime_env: dict[str, Any] = {"env_vars": env_vars}
    if working_dir and "://" in working_dir:
        runtime_env["working_dir"] = working_dir
    else:
        runtime_env.update(working_dir=str(Path(working_dir or root).resolve()), excludes=list(EXCLUDES))
    if requirements:
        runtime_env["pip"] = read_requirements(requirements)
        runtime_env["config"] = {"setup_timeout_seconds": 1800}
    return runtime_env


# ---------------------------------------------------------------------------- address and token
def resolve_address(address: str | None = None, environ: Any = os.environ) -> str:
    """--address, else $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS, else the local dashboard."""
    for value in (address, environ.get("RAY_API_SERVER_ADDRESS"), environ.get("RAY_ADDRESS")):
        if value:
            return value.rstrip("/")
    return DEFAULT_ADDRESS


def find_token(environ: Any = os.environ, home: Path | None = None) -> tuple[str | None, str]:
    """(token, where it came from), looked up as Ray does; (None, why) without one or with auth disabled."""
    if environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None, "none sent (RAY_AUTH_MODE=disabled)"
    if environ.get("RAY_AUTH_TOKEN", "").strip():
        return environ["RAY_AUTH_TOKEN"].strip(), "$RAY_AUTH_TOKEN"
    if environ.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(environ["RAY_AUTH_TOKEN_PATH"]).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as e:
            raise JobsError(f"RAY_AUTH_TOKEN_PATH={path} cannot be read ({e.strerror})") from None
        if not token:
            raise JobsError(f"RAY_AUTH_TOKEN_PATH={path} is empty")
        return token, f"$RAY_AUTH_TOKEN_PATH ({path})"
    default = (home or Path.home()) / ".ray" / "auth_token"
    token = default.read_text().strip() if default.is_file() else ""
    if token:
        return token, str(default)
    return None, "none found ($RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)"


@contextlib.contextmanager
def _quiet_ray_logs() -> Iterator[None]:
    """Keep errors only from Ray's client, which logs each packaging step (call after the import)."""
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def translate_errors(address: str, token_source: str) -> Iterator[None]:
    """The client's exceptions (unreachable server, refused token, the server's answer) as JobsError."""
    import requests
    from ray.exceptions import AuthenticationError, RpcError

    try:
        yield
    except AuthenticationError as e:
        reason = str(e).strip().splitlines()[0]
        raise JobsError(
            f"{address} refused the request: {reason}\n  token: {token_source}\n  fix: on the head node "
            "`ray get-auth-token` prints the cluster's token; set RAY_AUTH_TOKEN to it, or write it to "
            "~/.ray/auth_token (or to the file named by RAY_AUTH_TOKEN_PATH)") from None
    except (ConnectionError, requests.exceptions.RequestException, RpcError) as e:
        raise JobsError(
            f"cannot reach the Ray job server at {address} ({e})\n  is the cluster up? `ray start --head` "
            "serves it on port 8265; pass --address http://HEAD:8265 or set RAY_ADDRESS") from None
    except (RuntimeError, ValueError) as e:  # the server's answer (unknown job id, ...) or a bad runtime env
        raise JobsError(str(e).strip()) from None


def connect(address: str | None = None):
    """(JobSubmissionClient, address, token source) for --address / $RAY_ADDRESS, with the token if any."""
    address = resolve_address(address)
    token, source = find_token()
    if token and not address.startswith(("http://", "https://")):
        # A GCS or ray:// address is resolved through Ray's own (C++) client, which reads the mode here.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    from ray.job_submission import JobSubmissionClient

    headers = {"Authorization": f"Bearer {token}"} if token else None
    saved = {k: os.environ.pop(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if k in os.environ}
    try:  # the client prefers those variables to its address argument; --address must win
        with _quiet_ray_logs(), translate_errors(address, source):
            client = JobSubmissionClient(address, headers=headers)
    finally:
        os.environ.update(saved)
    return client, address, source


# ------------------------------------------------------------------------------------------ waiting
async def _stream_logs(client, job_id: str, out, timeout: float | None) -> None:
    async with asyncio.timeout(timeout):
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()


def wait_for_job(client, job_id: str, *, follow: bool = True, timeout: float | None = None,
                 poll_s: float = 1.0, out=None) -> str:
    """Block until the job is SUCCEEDED, FAILED or STOPPED (returned); stream its logs to `out` if follow."""
    import aiohttp

    deadline = None if timeout is None else time.monotonic() + timeout
    if follow:
        try:
            asyncio.run(_stream_logs(client, job_id, out or sys.stdout, timeout))
        except TimeoutError:
            raise JobsTimeout(f"job {job_id} still running after {timeout:g} s; it keeps running") from None
        except (RuntimeError, OSError, aiohttp.ClientError) as e:
            print(f"[moon-ray] log stream lost ({e}); waiting without logs", file=sys.stderr)
    while True:
        status = client.get_job_status(job_id).value
        if status in TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise JobsTimeout(f"job {job_id} still {status} after {timeout:g} s; it keeps running")
        time.sleep(poll_s)


def _report(client, job_id: str, *, follow: bool, timeout: float | None) -> int:
    start = time.monotonic()
    status = wait_for_job(client, job_id, follow=follow, timeout=timeout)
    info = client.get_job_info(job_id)
    if status != "SUCCEEDED" and not follow:
        tail = client.get_job_logs(job_id).splitlines()[-40:]
        print("\n".join(["--- last lines of the job's logs ---", *tail]), file=sys.stderr)
    why = f": {info.message}" if status != "SUCCEEDED" and info.message else ""
    print(f"job {job_id} {status} after {time.monotonic() - start:.1f} s{why}")
    return 0 if status == "SUCCEEDED" else 1


# --------------------------------------------------------------------------------------------- CLI
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
        entrypoint = build_entrypoint(args.pipeline, args.config, rest, paths=args.paths)
        runtime_env = build_runtime_env(working_dir=args.working_dir, requirements=args.requirements,
                                        env=args.env)
        if args.dry_run:
            plan = {"address": resolve_address(args.address), "entrypoint": entrypoint,
                    "runtime_env": runtime_env}
            print(json.dumps(plan, indent=2))
            return 0
        client, address, source = connect(args.address)
        with _quiet_ray_logs(), translate_errors(address, source):
            job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env,
                                       submission_id=args.submission_id,
                                       metadata={"moon_ray_pipeline": args.pipeline})
            _print_submitted(job_id, address, entrypoint)
            if not args.wait:
                return 0
            return _report(client, job_id, follow=not args.no_follow, timeout=args.timeout)
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
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def _status(client, args) -> int:
    info = client.get_job_info(args.job_id)
    took = f"{(info.end_time - info.start_time) / 1000:.1f} s" if info.end_time and info.start_time else "-"
    print(f"{args.job_id}  {info.status.value}\n  message:    {info.message or '-'}\n"
          f"  entrypoint: {info.entrypoint}\n  started:    {_when(info.start_time)}\n"
          f"  ended:      {_when(info.end_time)}\n  duration:   {took}")
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
        with _quiet_ray_logs(), translate_errors(address, source):
            return _JOB_ACTIONS[args.jobs_action](client, args)
    except (JobsError, KeyboardInterrupt) as e:
        return _fail(f"jobs {args.jobs_action}", e)
