"""Ray Jobs: submit a pipeline to a Ray cluster, then follow, inspect or stop it.

    moon-ray submit preprocess --address http://HEAD:8265 --wait data.limit=500
    moon-ray submit train --config pipelines/configs/joint.yaml ray.use_custom_resources=true
    moon-ray jobs status|logs|stop JOB_ID [--address URL] [--follow]
    moon-ray jobs list [--address URL]

One module per concern:

- entrypoint.py: what the job runs: `python pipelines/<name>.py [--config FILE] [overrides]` with the
  config's relative paths rewritten for the cluster, and its runtime env (the repository as working_dir);
- interpreter.py: which Python runs it: a probe job checks the cluster's `python` for moon-ray's
  requirements before submitting, and a job that fails on an import is told as one line and the fix;
- client.py: the job server's address and token, the connected client, Ray's errors, waiting, the report;
- cli.py: `moon-ray submit` and `moon-ray jobs` (the functions moon_ray/cli.py names).

The names below are re-exported so that `from moon_ray.jobs import X` works for each of them.
"""

from moon_ray.jobs.client import (
    DEFAULT_ADDRESS,
    connect,
    find_token,
    report,
    resolve_address,
    translate_errors,
    wait_for_job,
)
from moon_ray.jobs.entrypoint import (
    EXCLUDES,
    JOB_ENV,
    ROOT,
    available_pipelines,
    build_entrypoint,
    build_runtime_env,
    localise,
    localise_overrides,
    pipeline_script,
    read_requirements,
    shipped,
)
from moon_ray.jobs.errors import JobsError, JobsTimeout
from moon_ray.jobs.interpreter import check_python, choose_python, diagnose

__all__ = [
    "DEFAULT_ADDRESS", "EXCLUDES", "JOB_ENV", "ROOT", "JobsError", "JobsTimeout", "available_pipelines",
    "build_entrypoint", "build_runtime_env", "check_python", "choose_python", "connect", "diagnose",
    "find_token", "localise", "localise_overrides", "pipeline_script", "read_requirements", "report",
    "resolve_address", "shipped", "translate_errors", "wait_for_job",
]
