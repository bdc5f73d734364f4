"""The Ray Serve deployments, their application builder, and `moon-ray serve`.

    moon-ray index --model outputs/train/export        # once: the catalog index artifact (eval/index_job.py)
    moon-ray serve --model outputs/train/export        # replicas load outputs/train/export-index
    moon-ray serve                                     # frozen baseline over outputs/catalog, 127.0.0.1:8000
    moon-ray serve serve.index_dir=/mnt/shared/index-frozen --port 8001
    serve run pipelines/configs/serve.yaml             # the same application from a Serve config file
    serve run moon_ray.serve.app:build_app serve.index_limit=500    # or from the builder, dotted overrides

Two deployments. `MoonEmbeddings`, the ingress, with a FastAPI app built on each replica (api.py): it
starts its model process (worker.py; `serve.model`: a baseline name or an exported model directory,
`serve.cpus_per_replica` torch threads) and, while that loads, reads the catalog index: the directory
`serve.index_dir`, else the model's default place (`<export>-index` beside an export, `index-<name>`
beside data.output_dir for a baseline; moon_ray/eval/index_artifact.py). An index built by another
model is refused with an error naming both. Only when no index exists there, and
`serve.index_build_at_start` is on, does the replica embed the catalog itself (split
`serve.index_split`, at most `serve.index_limit`; minutes): the fallback. `serve.index_limit=0` turns
/v1/search off. `MoonReasoner` (reasoner.py), deployed when `serve.reasoning` and the model reasons,
embeds the documents (`input_type: document`) of a model that reasons, a greedy trace each, on
replicas of its own, so that generation never holds the ingress's model process. `MoonCreative`
(creative.py), deployed when `serve.creative_model` names a creative selector, answers POST
/v1/creative/select the same way, on replicas of its own.

Replicas ask for `serve.cpus_per_replica` CPUs and the `moon_serve` custom resource when
`ray.use_custom_resources` is on; `serve.num_replicas` of them, or autoscaling between
`serve.min_replicas` and `serve.max_replicas` at `serve.target_ongoing_requests` per replica.

`build_app(args)` is the application builder that `serve run`, `serve deploy` and the KubeRay
RayService (cluster/kuberay-rayservice.yaml) import. `args` holds `config` (a YAML file), `overrides`
(a list of dotted overrides, or one string of them separated by spaces), and any other keys as config:
nested sections (`{"serve": {"port": 8001}}`) or dotted keys (`serve.port: 8001`). Relative paths
resolve against the current directory, then the repository root.

API keys: `serve.api_key`, else `$MOON_RAY_API_KEY` where the application is built (or, failing that,
on the replica): one key or several, "k1,k2" or "team-a:k1,team-b:k2" (names label rate limits and
metrics). They are handed to the replicas apart from the config. `serve.auth=required` (and `auto`
when serve.host is not a loopback address) refuses to build the application, and a replica refuses to
start, without a key; `serve.auth=open` serves without one.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from ray import serve

from moon_ray.config import (
    Config,
    ConfigError,
    absolute_path,
    build,
    load_config,
    to_dict,
    to_overrides,
    with_absolute_paths,
)
from moon_ray.infrastructure.timing import Stopwatch, timed
from moon_ray.serve.worker import ModelReplica

APP_NAME = "moon-ray"
ENV_KEY = "MOON_RAY_API_KEY"
REPO = Path(__file__).resolve().parents[2]
LOOPBACK = ("127.0.0.1", "localhost", "::1")
log = logging.getLogger(__name__)


@serve.deployment(name="MoonEmbeddings")
@serve.ingress()
class MoonServe(ModelReplica):
    """A replica: the model, its catalog index, and the FastAPI app over both."""

    def __init__(self, config: dict, api_key: str | None = None, reasoner=None, creative=None):
        from moon_ray.eval.index_artifact import model_identity
        from moon_ray.serve.engine import Engine
        from moon_ray.serve.metrics import ServeMetrics
        from moon_ray.serve.worker import ModelWorker, model_spec

        cfg = build(Config, config)
        self.keys = api_keys(cfg, api_key)
        startup: dict[str, float] = {}
        clock = Stopwatch()
        worker = ModelWorker(model_spec(cfg), wait=False)  # the model loads in its own process meanwhile
        try:
            with timed("index_load_s", startup):
                identity = model_identity(cfg.serve.model)
                index = saved_index(cfg, identity)
            with timed("model_load_s", startup):
                worker.wait_ready()
            index = checked_or_built(cfg, index, worker, identity, startup)
        except BaseException:
            worker.close()
            raise
        startup["total_s"] = clock.elapsed()
        self.startup = {k: round(v, 2) for k, v in startup.items()}
        log.warning("replica ready in %.1f s: %s", startup["total_s"], self.startup)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.metrics = ServeMetrics(self.replica, model_pid=lambda: worker.pid)
        self.engine = Engine(worker, cfg.serve, {model_key(cfg)}, reasoner=reasoner if cfg.serve.reasoning else None,
                             metrics=self.metrics)
        self.worker, self.executor = worker, self.engine.executor  # closed with the replica (ModelReplica)
        self.index = index
        self.scfg = cfg.serve
        self.creative = None
        if creative is not None:  # POST /v1/creative/select, answered by the MoonCreative deployment
            from moon_ray.serve.creative import CreativeClient, creative_model_id

            self.creative = CreativeClient(creative, creative_model_id(cfg.serve.creative_model),
                                           cfg.serve.creative_timeout_s)

    def __serve_build_asgi_app__(self):
        from moon_ray.serve.api import create_api

        return create_api(self.engine, self.index, self.scfg, self.keys, replica=self.replica,
                          metrics=self.metrics, startup=self.startup, creative=self.creative)


def load_encoder(cfg: Config):
    """The served encoder, in this process (for benchmarks)."""
    from moon_ray.serve.worker import load, model_spec

    return load(model_spec(cfg))


def model_key(cfg: Config) -> str:
    """Another name requests may use for the served model: the baseline's name, or the export's absolute path."""
    path = Path(cfg.serve.model)
    return str(path.resolve()) if path.is_dir() else cfg.serve.model


def saved_index(cfg: Config, identity: dict):
    """The prebuilt index to serve (identity checked), or None: search off, or none built (fallback allowed)."""
    from moon_ray.eval.index_artifact import has_index, index_location
    from moon_ray.serve.search import CatalogIndex

    if cfg.serve.index_limit == 0:
        return None
    path, explicit = index_location(cfg)
    if has_index(path):
        return CatalogIndex.load(path, cfg, identity)
    if explicit or not cfg.serve.index_build_at_start:
        raise FileNotFoundError(missing_index(cfg, path, explicit))
    return None


def checked_or_built(cfg: Config, index, worker, identity: dict, startup: dict):
    """The loaded index once its dimension is checked against the model; the fallback build when none."""
    from moon_ray.serve.search import CatalogIndex
    from moon_ray.serve.worker import ProcessEncoder

    dim = int(worker.info["dim"])
    if index is not None:
        if index.manifest["dim"] != dim:
            raise ConfigError(f"the catalog index at {index.path} holds {index.manifest['dim']}-d vectors, the "
                              f"model gives {dim}-d ones; rebuild it with `moon-ray index --model {cfg.serve.model}`")
        return index
    if cfg.serve.index_limit == 0:
        return None
    with timed("index_build_s", startup):
        return CatalogIndex.build(cfg, ProcessEncoder(worker), identity)


def missing_index(cfg: Config, path: Path, explicit: bool) -> str:
    why = f"serve.index_dir={path} holds no catalog index" if explicit else \
        f"no prebuilt catalog index at {path} and serve.index_build_at_start=false"
    return f"{why}; build it: `moon-ray index --model {cfg.serve.model} --out {path}`"


def auth_required(cfg: Config) -> bool:
    s = cfg.serve
    return s.auth == "required" or (s.auth == "auto" and s.host not in LOOPBACK and not s.host.startswith("127."))


def api_keys(cfg: Config, text: str | None) -> dict[str, str]:
    """{key: name} from `text`, else serve.api_key, else $MOON_RAY_API_KEY; ConfigError when auth is required
    and there is none."""
    from moon_ray.serve.errors import parse_keys

    try:
        keys = parse_keys(text or cfg.serve.api_key or os.environ.get(ENV_KEY))
    except ValueError as e:
        raise ConfigError(f"serve.api_key / ${ENV_KEY}: {e}") from None
    if not keys and auth_required(cfg):
        raise ConfigError(
            f"serve.auth={cfg.serve.auth} (host {cfg.serve.host}) needs an API key and none is set: put one in "
            f"${ENV_KEY} (the RayService reads it from the Secret moon-ray-api-key) or serve.api_key, or "
            "run without keys on purpose with serve.auth=open")
    return keys


# ---------------------------------------------------------------------------------- application
def build_app(args: dict[str, Any]):
    """The Serve application builder: `import_path: moon_ray.serve.app:build_app` with these `args`."""
    return application(config_from_args(args))


def config_from_args(args: dict[str, Any] | None) -> Config:
    """{"config": FILE, "overrides": [...], <sections or dotted keys>...} -> Config with absolute paths."""
    args = dict(args or {})
    path = args.pop("config", None)
    overrides = args.pop("overrides", None) or []
    if isinstance(overrides, str):
        overrides = overrides.split()
    if not isinstance(overrides, list):
        raise ConfigError(f"build_app: 'overrides' must be a list of key.sub=value strings, got {overrides!r}")
    # Builder args hold override text ("serve.max_inputs": "7" is the number 7), hence verbatim strings.
    settings = to_overrides(args, verbatim_strings=True)
    cfg = load_config(absolute_path(path, search=[REPO]) if path else None, [*settings, *map(str, overrides)])
    return absolute_paths(cfg)


def absolute_paths(cfg: Config) -> Config:
    """Replicas may run in another directory: pin the paths the deployment reads (each under the current
    directory, else under the repository root: `serve run` and KubeRay start in either)."""
    model_is_path = "/" in cfg.serve.model or Path(cfg.serve.model).is_dir()  # else a baseline's name
    keys = ["data.output_dir", "serve.index_dir", "serve.creative_model", *(["serve.model"] if model_is_path else [])]
    return with_absolute_paths(cfg, keys, search=[REPO])


def check_sources(cfg: Config) -> str:
    """Fail where the application is built, not in a replica restart loop, when an input is missing or an
    index belongs to another model. Returns what the replicas will do for the index (for the CLI)."""
    from moon_ray.eval.index_artifact import (
        check_identity,
        has_index,
        index_location,
        model_identity,
        read_manifest,
    )
    from moon_ray.models.encoder import registered
    from moon_ray.serve.creative import check_creative_model

    s = cfg.serve
    check_creative_model(s.creative_model)
    if s.model not in registered() and not Path(s.model).is_dir():
        raise ConfigError(f"serve.model: {s.model!r} is neither a baseline ({', '.join(registered())}) nor a "
                          "directory (an exported model: outputs/train/export)")
    if s.index_limit == 0:
        return "search off (serve.index_limit=0)"
    path, explicit = index_location(cfg)
    if has_index(path):
        manifest = read_manifest(path)
        check_identity(manifest, model_identity(s.model), path, s.model)
        return f"loading the catalog index {path} ({manifest['count']} products)"
    if explicit or not s.index_build_at_start:
        raise FileNotFoundError(missing_index(cfg, path, explicit))
    from moon_ray.eval.index_artifact import load_products

    load_products(dataclasses.replace(cfg, serve=dataclasses.replace(s, index_limit=1)))
    return (f"no prebuilt catalog index at {path}: each replica embeds the catalog at start (minutes); "
            f"build it once with `moon-ray index --model {s.model}`")


def deployment_options(cfg: Config) -> dict[str, Any]:
    from moon_ray.serve.worker import replica_actor_options

    s = cfg.serve
    actor = replica_actor_options(cfg, s.cpus_per_replica, s.gpus_per_replica)
    opts: dict[str, Any] = {"ray_actor_options": actor, "max_ongoing_requests": s.max_ongoing_requests,
                            "logging_config": {"enable_access_log": s.access_log}}
    if s.autoscaling:
        opts["autoscaling_config"] = {"min_replicas": s.min_replicas, "max_replicas": s.max_replicas,
                                      "target_ongoing_requests": s.target_ongoing_requests}
    else:
        opts["num_replicas"] = s.num_replicas
    return opts


def application(cfg: Config):
    """The bound deployments for `cfg` (checked first); the keys travel apart from the config."""
    from moon_ray.serve.reasoner import MoonReasoner, reasoner_options

    check_sources(cfg)
    keys = cfg.serve.api_key or os.environ.get(ENV_KEY) or None
    api_keys(cfg, keys)  # refuse here, where the application is built, when a key is required and missing
    plain = dataclasses.replace(cfg, serve=dataclasses.replace(cfg.serve, api_key=None))
    from moon_ray.eval.index_artifact import model_identity

    reasoner = None
    if cfg.serve.reasoning and model_identity(cfg.serve.model)["reasoning"]:  # documents need a trace each
        reasoner = MoonReasoner.options(**reasoner_options(cfg)).bind(to_dict(plain))
    creative = None
    if cfg.serve.creative_model:  # the creative selector, on replicas of its own (serve/creative.py)
        from moon_ray.serve.creative import MoonCreative, creative_options

        creative = MoonCreative.options(**creative_options(cfg)).bind(to_dict(plain))
    return MoonServe.options(**deployment_options(cfg)).bind(to_dict(plain), keys, reasoner, creative)


def start(cfg: Config, app, name: str = APP_NAME) -> str:
    """Start Serve's HTTP proxy on serve.host:serve.port, deploy `app`, wait until it runs; its base URL."""
    s = cfg.serve
    serve.start(http_options={"host": s.host, "port": s.port}, logging_config={"enable_access_log": s.access_log})
    serve.run(app, name=name, route_prefix=s.route_prefix)
    return f"http://{s.host}:{s.port}{s.route_prefix.rstrip('/')}"


# ------------------------------------------------------------------------------------------ CLI
def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="a baseline name (frozen, random) or an exported model directory (serve.model)")
    p.add_argument("--host", help="bind address (serve.host, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (serve.port, default 8000)")
    p.add_argument("--build-index", metavar="DIR",
                   help="the same as `moon-ray index --out DIR`: build the catalog index artifact and exit")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--blocking", dest="detach", action="store_false", default=False,
                      help="stay in the foreground until Ctrl-C, then shut Serve down (default)")
    mode.add_argument("--detach", dest="detach", action="store_true",
                      help="deploy and return; needs a running Ray cluster (ray.address=auto after `ray start --head`)")


def cli_serve(args) -> int:
    from moon_ray.infrastructure.runtime import init_ray

    overrides = list(args.overrides)
    for flag, key in (("model", "serve.model"), ("host", "serve.host"), ("port", "serve.port")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    cfg = absolute_paths(load_config(args.config, overrides))
    if args.build_index:
        return cli_build_index(cfg, args.build_index)
    if args.detach and not (cfg.ray.address or os.environ.get("RAY_ADDRESS")):
        raise ConfigError("--detach needs a running Ray cluster to leave the deployment on (ray.address=auto "
                          "after `ray start --head`); a local Ray ends with this command")
    plan = check_sources(cfg)
    app = application(cfg)
    init_ray(cfg.ray)
    print(f"deploying {cfg.serve.model}: {plan} ...", flush=True)
    url = start(cfg, app)
    creative = f", {url}/v1/creative/select" if cfg.serve.creative_model else ""
    print(f"serving {url}/v1/embeddings, {url}/v1/search{creative}, {url}/v1/models; {url}/healthz, {url}/readyz, "
          f"{url}/metrics\n{example(cfg, url)}", flush=True)
    if args.detach:
        return 0
    wait_for_stop()
    return 0


def wait_for_stop() -> None:
    """Block until Ctrl-C or SIGTERM, then shut Serve (and a Ray this process started) down cleanly."""
    import ray

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("shutting down", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()


def example(cfg: Config, url: str) -> str:
    """A first request to try, with the served model's id (asked from the running server)."""
    import httpx

    from moon_ray.serve.errors import parse_keys

    key = next(iter(parse_keys(cfg.serve.api_key or os.environ.get(ENV_KEY))), None)
    local = url.replace("://0.0.0.0:", "://127.0.0.1:")
    models = httpx.get(f"{local}/v1/models", headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=60)
    model_id = models.json()["data"][0]["id"]
    auth = ' -H "Authorization: Bearer $MOON_RAY_API_KEY"' if key else ""
    return (f"  curl -s {url}/v1/embeddings{auth} -H 'Content-Type: application/json' "
            f"-d '{{\"model\": \"{model_id}\", \"input\": \"Men Navy Blue Shirts\"}}'")


def cli_build_index(cfg: Config, out: str) -> int:
    """`moon-ray serve --build-index DIR`: `moon-ray index --out DIR` (the Ray Data job)."""
    from moon_ray.eval.index_job import build_index_dir

    path = Path(absolute_path(out, search=[REPO]))
    manifest = build_index_dir(cfg, path)
    print(f"indexed {manifest['count']} products with {manifest['identity']['name']} (dim {manifest['dim']}) in "
          f"{manifest['seconds']:.0f} s: {path}\nserve it: moon-ray serve --model {cfg.serve.model} "
          f"serve.index_dir={path}")
    return 0
