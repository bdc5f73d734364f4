"""What a job runs: the pipeline script, its config with paths rewritten for the cluster, its runtime env.

A job runs `python pipelines/<name>.py [--config FILE] [overrides]` (`eval` runs evaluate.py) with this
repository as its working_dir: uploaded without .venv, outputs, .git and caches, and first on the job's
PYTHONPATH, so the cluster runs the code of this checkout. (`python` may be replaced by another
interpreter: interpreter.py decides which one before submitting.)

Paths. Config paths are relative to the caller's directory, but a job runs in a copy of the repository
elsewhere. So the resolved config's paths (defaults, --config file, overrides) are rewritten: keys named
`catalog` or `*_dir` always, others when they name something that exists here (`*_path` / `*_file` keys,
values with a `/`; a model id `org/name` is left alone). Inside the uploaded tree a path becomes
repo-relative (it travels with the job), elsewhere absolute: right for a local `ray start` cluster or
storage mounted at the same path on every node; other clusters need cluster paths as overrides, and
`--paths keep` sends values untouched. A --config file outside the uploaded tree is inlined.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from moon_ray.config import absolute_path, flatten, load_config, parse_override, to_overrides
from moon_ray.infrastructure.runtime import DEFAULT_ENV
from moon_ray.jobs.errors import JobsError

ROOT = Path(__file__).resolve().parents[2]
ALIASES = {"eval": "evaluate"}  # pipeline name -> script stem, where they differ
# Left out of the uploaded working_dir (gitignore-style patterns relative to the repository root).
EXCLUDES = (".git", ".venv", "venv", "outputs", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache",
            ".mypy_cache", ".cache", "*.egg-info", "bench/results")
# The job's env_vars (the caller's values win). moon_ray.infrastructure.runtime.init_ray passes DEFAULT_ENV to
# ray.init as well, and Ray refuses a driver runtime_env that repeats a job's key unless told to merge them.
JOB_ENV = {**DEFAULT_ENV, "PYTHONUNBUFFERED": "1", "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1"}
DIR_KEY = re.compile(r"(^|_)(catalog|dir)$")  # config leaves that always hold a path, existing or not
PATH_KEY = re.compile(r"(^|_)(path|file)$")  # config leaves that hold a path when it exists here
OVERRIDE = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)*=")


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
    path = Path(absolute_path(value, cwd=cwd))
    leaf = key.rsplit(".", 1)[-1]
    if not DIR_KEY.search(leaf):
        if not (PATH_KEY.search(leaf) or "/" in value) or not path.exists():
            return None
    new = path.relative_to(root).as_posix() if shipped(path, root) else str(path)
    return None if new == value else new


def localise_overrides(overrides: Sequence[str], cfg: Any, root: Path, cwd: Path) -> list[str]:
    """Rewrite path values of `overrides`, then add one override per other relative path of `cfg`."""
    out, given = [], set()
    for item in overrides:
        key, value = parse_override(item)
        new = localise(key, value, root, cwd)
        out.append(item if new is None else to_overrides({key: new})[0])
        given.add(key)
    for key, value in flatten(cfg).items():
        new = None if key in given else localise(key, value, root, cwd)
        if new is not None:
            out.append(to_overrides({key: new})[0])
    return out


def config_args(config: str | None, root: Path, cwd: Path) -> tuple[list[str], list[str]]:
    """(`--config FILE` for the job, overrides inlined from a config file that is not uploaded)."""
    if config is None:
        return [], []
    path = Path(absolute_path(config, cwd=cwd))
    if shipped(path, root):
        return ["--config", path.relative_to(root).as_posix()], []
    return [], to_overrides(yaml.safe_load(path.read_text()) or {})


def build_entrypoint(pipeline: str, config: str | None = None, args: Sequence[str] = (), *,
                     root: Path = ROOT, cwd: Path | None = None, paths: str = "absolute",
                     python: str = "python") -> str:
    """The job's shell command, run by `python` (or the interpreter named); the config is resolved (and
    validated) here, not on the cluster, so a bad override fails before anything is submitted."""
    cwd = Path(cwd or os.getcwd()).resolve()
    script = pipeline_script(pipeline, root)
    overrides = [a for a in args if OVERRIDE.match(a)]  # the rest (e.g. --compare DIR) goes as it is
    extra = [a for a in args if not OVERRIDE.match(a)]
    cfg = load_config(None if config is None else absolute_path(config, cwd=cwd), overrides)
    cfg_args, inlined = config_args(config, root, cwd)
    overrides = inlined + overrides
    if paths == "absolute":
        overrides = localise_overrides(overrides, cfg, root, cwd)
        extra = [a if a.startswith("-") else localise("path", a, root, cwd) or a for a in extra]
    return shlex.join([python, script, *cfg_args, *overrides, *extra])


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
