"""Which Python runs a job: checked on the cluster before submitting, and named when a job fails for it.

A job's entrypoint is a shell command, and Ray runs it with the PATH that the cluster's `ray start` was
given, not with the Python that runs Ray itself. So `.venv/bin/ray start --head` without activating the
venv leaves the system Python as the job's `python`, which lacks pyarrow, torch, ... and the job dies on
its first import with a traceback that says nothing about why.

Before submitting, `moon-ray submit` runs a probe job (a few seconds; `--no-check` skips it): a shell
command that runs `python` (or `--python PATH`) and this environment's interpreter (sys.executable) on
the cluster, and reads back which executable each is, its version, and which of moon-ray's requirements
it has installed. Then:

- the cluster's `python` has them: the job runs `python ...` as always;
- it lacks them, and the cluster runs on this machine (the probe read a file written here just before,
  so it sees this machine's files: the same venv at the same path) and this interpreter has them all:
  the job runs with this interpreter (sys.executable), and a note says so. Safe, because it is the very
  environment moon-ray is running in, on the same machine;
- otherwise (a remote cluster, or --python named a Python that lacks them): refused before submitting,
  with the Python the cluster uses, what it lacks, and how to start the cluster from moon-ray's
  environment. A remote cluster is never pointed at a path of this machine.

With --requirements the job gets a pip virtualenv of its own, so the probe (which runs without one)
would say nothing about it and is skipped. A job that still fails on an import is reported with its one
`ModuleNotFoundError` line and the same fix (`diagnose`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from moon_ray.infrastructure.timing import Stopwatch
from moon_ray.jobs.entrypoint import ROOT
from moon_ray.jobs.errors import JobsError

MARK = "@@moon-ray-probe"
PROBE_TIMEOUT_S = 90.0
# Run by each candidate Python on the cluster: stdlib only, and valid in any Python the cluster may have,
# so that even an old one answers instead of failing on the probe's own syntax.
PROBE_CODE = r"""
import json, sys
try:
    from importlib.metadata import version
except ImportError:
    version = None
found = {}
for name in json.loads(sys.argv[1]):
    try:
        found[name] = version(name)
    except Exception:
        found[name] = None
info = {"executable": sys.executable, "version": "%d.%d.%d" % tuple(sys.version_info[:3]), "dists": found}
print("@@moon-ray-probe result " + json.dumps(info))
"""
IMPORT_ERROR = re.compile(r"^(ModuleNotFoundError|ImportError): .*$", re.M)


@dataclass
class Found:
    """What one candidate Python reported on the cluster (or printed instead, when it did not run)."""

    label: str  # as the entrypoint names it: `python`, or a path
    executable: str | None = None
    version: str | None = None
    dists: dict[str, str | None] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """'/usr/bin/python3.10 (Python 3.10.12)', or 'it' for a candidate that did not run."""
        return "it" if self.executable is None else f"{self.executable} (Python {self.version})"


# ------------------------------------------------------------------------------------- requirements
def requirements() -> tuple[SpecifierSet, list[Requirement]]:
    """(requires-python, the core requirements) of the moon-ray being submitted: its pyproject.toml, or
    the installed distribution's metadata when there is no checkout. Extras (dev, cpu, gpu) are left out:
    the pipelines need the core only."""
    pyproject = ROOT / "pyproject.toml"
    if pyproject.is_file():
        project = tomllib.loads(pyproject.read_text())["project"]
        python, lines = project.get("requires-python", ""), project.get("dependencies", [])
    else:
        python, lines = metadata.metadata("moon-ray").get("Requires-Python", ""), metadata.requires("moon-ray")
    reqs = [Requirement(line) for line in lines or []]
    return SpecifierSet(python or ""), [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]


def problems(found: Found, needs: tuple[SpecifierSet, list[Requirement]], cluster_ray: str | None) -> list[str]:
    """Why `found` cannot run moon-ray's pipelines (empty: it can)."""
    if found.executable is None:
        said = next((line for line in reversed(found.output) if line.strip()), "it printed nothing")
        return [f"does not run ({said.strip()})"]
    python, reqs = needs
    out = [] if python.contains(found.version, prereleases=True) else [f"is Python {found.version}, not {python}"]
    for req in reqs:
        have = found.dists.get(req.name)
        if have is None:
            out.append(f"lacks {req.name}")
        elif not req.specifier.contains(have, prereleases=True):
            out.append(f"has {req.name} {have}, not {req.specifier}")
    ray = found.dists.get("ray")
    if ray and cluster_ray and ray != cluster_ray:
        out.append(f"has ray {ray} while the cluster runs ray {cluster_ray}")
    return out


def summary(issues: Sequence[str], shown: int = 6) -> str:
    """'is Python 3.9.2, not >=3.11; lacks torch, ray, pyarrow, ... (+4 more)'."""
    missing = [i.removeprefix("lacks ") for i in issues if i.startswith("lacks ")]
    parts = [i for i in issues if not i.startswith("lacks ")]
    if missing:
        more = f" (+{len(missing) - shown} more)" if len(missing) > shown else ""
        parts.append(f"lacks {', '.join(missing[:shown])}{more}")
    return "; ".join(parts)


# -------------------------------------------------------------------------------------------- probe
def probe_command(candidates: Sequence[str], dists: Sequence[str], nonce_path: str) -> str:
    """The probe job's shell command: echo the nonce file's content (read on the cluster), then run the
    probe code with each candidate; `true` at the end, as a missing candidate is an answer, not a failure."""
    code, names = shlex.quote(PROBE_CODE), shlex.quote(json.dumps(list(dists)))
    loop = " ".join(shlex.quote(c) for c in candidates)
    return (f'echo "{MARK} nonce $(cat {shlex.quote(nonce_path)} 2>/dev/null)"; '
            f'for py in {loop}; do echo "{MARK} python $py"; "$py" -c {code} {names} 2>&1; done; true')


def parse_probe(logs: str) -> tuple[str | None, dict[str, Found]]:
    """(the nonce the cluster read, or None; what each candidate reported) from the probe job's logs."""
    nonce, found, current = None, {}, None
    for line in logs.splitlines():
        if line.startswith(f"{MARK} nonce"):
            nonce = line.removeprefix(f"{MARK} nonce").strip() or None
        elif line.startswith(f"{MARK} python "):
            label = line.removeprefix(f"{MARK} python ")
            current = found[label] = Found(label)
        elif current is not None and line.startswith(f"{MARK} result "):
            info = json.loads(line.removeprefix(f"{MARK} result "))
            current.executable, current.version, current.dists = info["executable"], info["version"], info["dists"]
        elif current is not None:
            current.output.append(line)
    return nonce, found


def run_probe(client, command: str, env_vars: dict[str, str], timeout: float) -> str | None:
    """Run `command` as a job with the job's env_vars (a PATH given with --env counts) and no working_dir;
    its logs, or None when it did not end within `timeout`. The probe job is deleted afterwards."""
    job_id = f"moon-ray-probe-{secrets.token_hex(6)}"
    client.submit_job(entrypoint=command, runtime_env={"env_vars": env_vars}, submission_id=job_id,
                      metadata={"moon_ray_probe": "python"})
    watch, status = Stopwatch(), "PENDING"
    try:
        while watch.elapsed() < timeout:
            status = client.get_job_status(job_id).value
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                return client.get_job_logs(job_id)
            time.sleep(0.2)
        return None
    finally:  # leave no probe behind: `moon-ray jobs list` shows the user's jobs
        with contextlib.suppress(RuntimeError):
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                delete_ended_job(client, job_id)
            else:
                client.stop_job(job_id)


def delete_ended_job(client, job_id: str, settle_s: float = 4.0) -> None:
    """Delete an ended job for good. Ray's job monitor notices the end of a job up to a second later, and
    when the job's record is gone by then it writes the job back as FAILED ("Entrypoint not found."); so
    delete, watch for that ghost during `settle_s`, and delete it too (the monitor has stopped by then)."""
    client.delete_job(job_id)
    watch = Stopwatch()
    while watch.elapsed() < settle_s:
        time.sleep(0.25)
        try:
            client.get_job_status(job_id)
        except RuntimeError:  # not found: not written back (yet)
            continue
        client.delete_job(job_id)
        return


def check_python(client, env_vars: dict[str, str], requested: str | None = None, *,
                 timeout: float = PROBE_TIMEOUT_S) -> tuple[str, str | None]:
    """(the interpreter the job's entrypoint should name, a note to print or None), from a probe job;
    JobsError when the cluster has no Python that can run moon-ray (see the module's docstring)."""
    local = sys.executable
    candidates = [requested or "python", *([local] if requested is None and local != "python" else [])]
    needs = requirements()
    with tempfile.NamedTemporaryFile("w", prefix="moon-ray-probe-", suffix=".txt") as nonce_file:
        nonce = secrets.token_hex(16)
        nonce_file.write(nonce)
        nonce_file.flush()
        logs = run_probe(client, probe_command(candidates, [r.name for r in needs[1]], nonce_file.name),
                         env_vars, timeout)
    seen, found = (None, {}) if logs is None else parse_probe(logs)
    if not found:
        why = f"no answer in {timeout:g} s" if logs is None else "the probe job printed nothing"
        return requested or "python", f"[moon-ray] could not check the cluster's Python ({why}); submitting anyway"
    cluster_ray = getattr(client, "_server_ray_version", None)
    return choose_python(found, lambda f: problems(f, needs, cluster_ray), requested=requested, local=local,
                         same_machine=seen == nonce)


def choose_python(found: dict[str, Found], issues: Callable[[Found], list[str]], *, requested: str | None,
                  local: str, same_machine: bool) -> tuple[str, str | None]:
    """The decision (module docstring): the cluster's `python` (or --python) when it can run moon-ray;
    else this interpreter, only when the cluster shares this machine's files and the user named none;
    else a JobsError that says which Python the cluster has and how to give it the right one."""
    python = requested or "python"
    first = found.get(python) or Found(python, output=["no answer from the probe"])
    bad = issues(first)
    if not bad:
        return python, None
    mine = found.get(local)
    if requested is None and same_machine and mine is not None and not issues(mine):
        return local, (f"[moon-ray] the cluster's `python`, {first.describe()}, {summary(bad)}; the cluster "
                       f"runs on this machine, so the job runs with this environment's {local}")
    who = f"--python {python}" if requested else "the cluster's `python`"
    where = "this machine's" if same_machine else "the head node's"
    raise JobsError(f"{who} cannot run moon-ray: {first.describe()} {summary(bad)}\n"
                    f"  (a job runs `python` from the PATH that {where} `ray start` was given)\n"
                    f"{fix(same_machine, requested is not None)}")


# ----------------------------------------------------------------------------------- explanation
def venv_hint() -> str:
    """How to enter this environment from the current directory (`.venv`, or its absolute path)."""
    if sys.prefix == sys.base_prefix:
        return "the Python environment that has moon-ray installed"
    rel = os.path.relpath(sys.prefix)
    return rel if not rel.startswith("..") else sys.prefix


def fix(same_machine: bool, named: bool) -> str:
    """The fix, for a cluster on this machine or a remote one."""
    venv = venv_hint()
    local = (f"  fix: start the cluster from moon-ray's environment, so that its `python` is the venv's:\n"
             f"         ray stop; source {venv}/bin/activate && ray start --head\n"
             f"       (or without activating: PATH=\"$PWD/{venv}/bin:$PATH\" {venv}/bin/ray start --head)")
    remote = ("  fix: install moon-ray's requirements in the Python the cluster's nodes start Ray from "
              "(`pip install -e .` in the repository, or an image built from cluster/Dockerfile) and start Ray "
              f"with that environment active (on the head: source {venv}/bin/activate && ray start --head)")
    other = "; or name a Python on the cluster that has them: --python /path/to/python"
    if named:
        other = "; or name another Python on the cluster with --python, or leave --python out"
    return (local if same_machine else remote) + other


def diagnose(logs: str, entrypoint: str | None = None) -> tuple[str, str] | None:
    """(one line, the fix) for a job that failed because its Python cannot run moon-ray: an import error,
    or no `python` at all; None for any other failure."""
    python = shlex.split(entrypoint)[0] if entrypoint else "python"
    errors = [m.group(0) for m in IMPORT_ERROR.finditer(logs)]
    if errors:
        line = errors[-1].strip()
    elif re.search(rf"{re.escape(python)}: (command )?not found|{re.escape(python)}: No such file", logs):
        line = f"`{python}` was not found on the cluster's PATH"
    else:
        return None
    hint = (f"  the job's Python (`{python}` on the cluster) cannot import what moon-ray needs; a job runs "
            f"`python` from the PATH the cluster's `ray start` was given.\n{fix(True, False)}\n"
            "  (on a remote cluster: install moon-ray's requirements in its nodes' Python; `moon-ray submit` "
            "checks the cluster's Python first unless --no-check)")
    return line, hint
