"""The Ray Serve deployment, its application builder, and `moon-ray serve`.

    moon-ray serve                                     # frozen baseline over outputs/catalog, 127.0.0.1:8000
    moon-ray serve --model outputs/train/export serve.index_split=test
    moon-ray serve --build-index outputs/serve/index-frozen serve.index_limit=2000   # embed, save, exit
    moon-ray serve serve.index_dir=outputs/serve/index-frozen --port 8001
    serve run pipelines/configs/serve.yaml             # the same application from a Serve config file
    serve run moon_ray.serve.app:build_app serve.index_limit=500    # or from the builder, dotted overrides

One deployment, `MoonEmbeddings`, with a FastAPI ingress built on each replica (api.py). A replica
starts its model process (worker.py; `serve.model`: a baseline name or an exported model directory,
`serve.cpus_per_replica` torch threads), then loads its catalog
index: from `serve.index_dir` when set, else by embedding `data.output_dir`'s products (split
`serve.index_split`, at most `serve.index_limit`; 0 turns /v1/search off). Replicas ask for
`serve.cpus_per_replica` CPUs (the model uses max(1, int(cpus)) torch threads) and the `moon_serve` custom
resource when `ray.use_custom_resources` is on; `serve.num_replicas` of them, or autoscaling between
`serve.min_replicas` and `serve.max_replicas` at `serve.target_ongoing_requests` per replica.

`build_app(args)` is the application builder that `serve run`, `serve deploy` and the KubeRay
RayService (cluster/kuberay-rayservice.yaml) import. `args` holds `config` (a YAML file), `overrides`
(a list of dotted overrides, or one string of them separated by spaces), and any other keys as config:
nested sections (`{"serve": {"port": 8001}}`) or dotted keys (`serve.port: 8001`). Relative paths
resolve against the current directory, then the repository root.

The bearer token is `serve.api_key`, else `$MOON_RAY_API_KEY` where the application is built (or,
failing that, on the replica); it is handed to the replicas apart from the config.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from moon_ray.infrastructure.timing import timed

APP_NAME = "moon-ray"
ENV_KEY = "MOON_RAY_API_KEY"
REPO = Path(__file__).resolve().parents[2]


@serve.deployment(name="MoonEmbeddings")
@serve.ingress()
class MoonServe:
    """A replica: the model, its catalog index, and the FastAPI app over both."""

    def __init__(self, config: dict, api_key: str | None = None):
        from moon_ray.serve.engine import Engine
        from moon_ray.serve.worker import ModelWorker, ProcessEncoder

        cfg = build(Config, config)
        worker = ModelWorker(worker_spec(cfg))  # the model runs in a child process (worker.py)
        key = model_key(cfg)
        self.engine = Engine(worker, cfg.serve, key)
        self.index = load_index(cfg, ProcessEncoder(worker), key)
        self.scfg = cfg.serve
        self.api_key = api_key or os.environ.get(ENV_KEY) or None

    def __serve_build_asgi_app__(self):
        from moon_ray.serve.api import create_api

        return create_api(self.engine, self.index, self.scfg, self.api_key,
                          replica=serve.get_replica_context().replica_id.unique_id)

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()


def worker_spec(cfg: Config) -> dict:
    """What the model process loads: serve.model on the replica's device with max(1, int(cpus)) threads."""
    s = cfg.serve
    return {"model": s.model, "device": "cuda" if s.gpus_per_replica > 0 else "cpu",
            "threads": max(1, int(s.cpus_per_replica)), "batch_size": s.max_batch_size,
            "reasoning_tokens": s.reasoning_max_tokens}


def load_encoder(cfg: Config):
    """The served encoder, in this process (for --build-index and benchmarks)."""
    from moon_ray.serve.worker import load

    return load(worker_spec(cfg))


def model_key(cfg: Config) -> str:
    """What identifies the served model in a saved index: the baseline's name, or the export's absolute path."""
    path = Path(cfg.serve.model)
    return str(path.resolve()) if path.is_dir() else cfg.serve.model


def load_index(cfg: Config, encoder, key: str):
    from moon_ray.serve.search import CatalogIndex

    if cfg.serve.index_dir:
        return CatalogIndex.load(cfg.serve.index_dir, cfg, encoder.dim, key)
    if cfg.serve.index_limit == 0:
        return None
    return CatalogIndex.build(cfg, encoder, key)


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
    keys = ["data.output_dir", "serve.index_dir", *(["serve.model"] if model_is_path else [])]
    return with_absolute_paths(cfg, keys, search=[REPO])


def check_sources(cfg: Config) -> None:
    """Fail where the application is built, not in a replica restart loop, when an input is missing."""
    from moon_ray.models.encoder import registered

    s = cfg.serve
    if s.model not in registered() and not Path(s.model).is_dir():
        raise ConfigError(f"serve.model: {s.model!r} is neither a baseline ({', '.join(registered())}) nor a "
                          "directory (an exported model: outputs/train/export)")
    if s.index_dir:
        if not (Path(s.index_dir) / "manifest.json").exists():
            raise FileNotFoundError(f"serve.index_dir={s.index_dir} holds no saved index (manifest.json); "
                                    "save one with `moon-ray serve --build-index DIR`")
    elif s.index_limit != 0:
        from moon_ray.serve.search import load_products

        load_products(dataclasses.replace(cfg, serve=dataclasses.replace(s, index_limit=1)))


def deployment_options(cfg: Config) -> dict[str, Any]:
    from moon_ray.infrastructure.resources import SERVE, request

    s = cfg.serve
    actor: dict[str, Any] = {"num_cpus": s.cpus_per_replica}
    if s.gpus_per_replica:
        actor["num_gpus"] = s.gpus_per_replica
    custom = request(SERVE, cfg.ray.use_custom_resources)
    if custom:
        actor["resources"] = custom
    opts: dict[str, Any] = {"ray_actor_options": actor, "max_ongoing_requests": s.max_ongoing_requests,
                            "logging_config": {"enable_access_log": s.access_log}}
    if s.autoscaling:
        opts["autoscaling_config"] = {"min_replicas": s.min_replicas, "max_replicas": s.max_replicas,
                                      "target_ongoing_requests": s.target_ongoing_requests}
    else:
        opts["num_replicas"] = s.num_replicas
    return opts


def application(cfg: Config):
    """The bound deployment for `cfg` (checked first); the token travels apart from the config."""
    check_sources(cfg)
    key = cfg.serve.api_key or os.environ.get(ENV_KEY) or None
    plain = dataclasses.replace(cfg, serve=dataclasses.replace(cfg.serve, api_key=None))
    return MoonServe.options(**deployment_options(cfg)).bind(to_dict(plain), key)


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
                   help="embed the catalog's products, save the index to DIR and exit; serve it with serve.index_dir=DIR")
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
    app = application(cfg)
    init_ray(cfg.ray)
    print(f"deploying {cfg.serve.model} (building the catalog index may take minutes) ...", flush=True)
    url = start(cfg, app)
    print(f"serving {url}/v1/embeddings, {url}/v1/search, {url}/v1/models, {url}/healthz\n{example(cfg, url)}",
          flush=True)
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

    key = cfg.serve.api_key or os.environ.get(ENV_KEY)
    local = url.replace("://0.0.0.0:", "://127.0.0.1:")
    models = httpx.get(f"{local}/v1/models", headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=60)
    model_id = models.json()["data"][0]["id"]
    auth = ' -H "Authorization: Bearer $MOON_RAY_API_KEY"' if key else ""
    return (f"  curl -s {url}/v1/embeddings{auth} -H 'Content-Type: application/json' "
            f"-d '{{\"model\": \"{model_id}\", \"input\": \"Men Navy Blue Shirts\"}}'")


def cli_build_index(cfg: Config, out: str) -> int:
    """`moon-ray serve --build-index DIR`: embed the configured catalog slice in this process, save it."""
    from moon_ray.serve.search import CatalogIndex

    check_sources(dataclasses.replace(cfg, serve=dataclasses.replace(cfg.serve, index_dir=None, index_limit=None)))
    with timed("build_index") as phase:
        encoder = load_encoder(cfg)
        index = CatalogIndex.build(cfg, encoder, model_key(cfg))
        path = index.save(absolute_path(out, search=[REPO]))
    print(f"indexed {index.size} products with {encoder.name} (dim {encoder.dim}) in "
          f"{phase.seconds:.0f} s: {path}\nserve it: moon-ray serve serve.index_dir={path}")
    return 0
