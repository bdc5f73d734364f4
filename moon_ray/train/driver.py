"""`moon-ray train`: contrastive or joint (contrastive + GRPO, rollout.enabled) training of the MOON
embedder on Ray Train.

    moon-ray train [--config pipelines/configs/joint.yaml] [train.steps=300 ...]

Reads the train split of the preprocessed catalog through Ray Data, runs `TorchTrainer` with
`train.num_workers` DDP workers (gloo on CPU, NCCL on GPU), shows a progress bar fed by rank 0,
checkpoints every `train.checkpoint_every` steps under train.output_dir/ray, resumes from the latest
checkpoint there, scores the val split every `train.eval_every` steps (train/validate.py), exports
the checkpoint with the best `train.select_metric` on val (the last one when validation is off) to
train.output_dir/export, and (serve.index_after_export) builds its catalog index beside it,
train.output_dir/export-index, which `moon-ray serve --model train.output_dir/export` loads.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import ray

from moon_ray.config import Config, to_dict, with_absolute_paths
from moon_ray.configlib import ConfigError
from moon_ray.infrastructure import resources
from moon_ray.infrastructure.runtime import init_ray
from moon_ray.infrastructure.timing import Stopwatch
from moon_ray.train.checkpoint import latest_checkpoint
from moon_ray.train.worker import BATCH_COLUMNS, train_loop_per_worker


def train_dataset(cfg: Config):
    """The train split as a materialised Ray Dataset (materialised so that no read task competes
    with the trainers for CPUs while they hold them)."""

    products = Path(cfg.data.output_dir) / "products"
    if not products.exists():
        raise FileNotFoundError(f"{products} does not exist: run `moon-ray preprocess data.output_dir={cfg.data.output_dir}` first")
    from ray.data.expressions import col

    ds = ray.data.read_parquet(str(products))
    ds = ds.select_columns([*BATCH_COLUMNS, *coaugment_columns(cfg, ds.schema().names), "split"])
    ds = ds.filter(expr=col("split") == "train").drop_columns(["split"])
    if cfg.train.limit is not None:
        ds = ds.limit(cfg.train.limit)
    ds = ds.materialize()
    need = cfg.train.batch_size * cfg.train.num_workers
    if ds.count() < need:
        raise ValueError(f"the train split has {ds.count()} products, fewer than one global batch ({need})")
    return ds


def coaugment_columns(cfg: Config, names: list[str]) -> list[str]:
    """The stored enriched titles (`moon-ray coaugment`) when `train.coaugment` is on and the shards
    have them; said on stdout when they are missing (training then uses the visual expansions only)."""
    from moon_ray.train.task import ENRICHED_COLUMN

    if not cfg.train.coaugment:
        return []
    if ENRICHED_COLUMN in names:
        return [ENRICHED_COLUMN]
    print(f"train.coaugment: the product shards have no {ENRICHED_COLUMN!r} column (run `moon-ray coaugment`); "
          "training with the visual expansions only", flush=True)
    return []


# glibc keeps freed blocks under its dynamic mmap threshold in a fragmented heap: a joint step's
# transient activations then stay resident (measured peak RSS 7.2 GB vs 3.0 GB with these).
RELEASE_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "1048576"}


def worker_env(cfg: Config) -> dict:
    """Runtime env of the Ray Train workers (merged into the job's)."""
    return {"env_vars": dict(RELEASE_MEMORY_ENV)} if cfg.train.release_memory else {}


def _resolve_init_from(cfg: Config) -> Config:
    """Check `train.init_from` on the driver and make it absolute (workers may run elsewhere)."""
    if not cfg.train.init_from:
        return cfg
    cfg = with_absolute_paths(cfg, ["train.init_from"])
    if not (Path(cfg.train.init_from) / "trainable.safetensors").is_file():
        raise ConfigError(f"train.init_from: {cfg.train.init_from} has no trainable.safetensors (not a checkpoint or export)")
    return cfg


def run_train(cfg: Config) -> dict:
    """Train, checkpoint, export; returns a summary (also written to train.output_dir/summary.json)."""
    cfg = _resolve_init_from(cfg)
    # the workers do not run in this directory: pin the paths they read and write (validation reads the
    # val split, rank 0 writes best/ and TensorBoard events)
    cfg = with_absolute_paths(cfg, ["data.output_dir", "train.output_dir"])
    init_ray(cfg.ray)
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    clock = Stopwatch()
    out = Path(cfg.train.output_dir).resolve()
    storage = out / "ray"
    resume_from = latest_checkpoint(storage) if cfg.train.resume else None
    progress = ProgressActor.options(num_cpus=0).remote()
    pool = start_rollout_pool(cfg) if cfg.rollout.enabled else None
    worker_resources = {"CPU": cfg.train.cpus_per_worker, **resources.request(resources.TRAINER, cfg.ray.use_custom_resources)}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": to_dict(cfg), "resume_from": str(resume_from) if resume_from else None,
                           "progress": progress, "rollout_pool": pool},
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu, resources_per_worker=worker_resources),
        run_config=RunConfig(name="run", storage_path=str(storage),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=cfg.train.max_failures),
                             worker_runtime_env=worker_env(cfg)),
        datasets={"train": train_dataset(cfg)},
    )
    start = json.loads((resume_from / "moon_state.json").read_text())["step"] if resume_from else 0
    pool_status = None
    try:
        result = _fit_with_progress(trainer, progress, start, cfg.train.steps)
    finally:
        if pool is not None:
            pool_status = _close_pool(pool)
    final = latest_checkpoint(storage)
    if final is None:
        raise RuntimeError(f"training finished without a checkpoint under {storage}")
    from moon_ray.models.export import export_model
    from moon_ray.train.validate import best_checkpoint

    best = best_checkpoint(out) if cfg.train.eval_every > 0 else None  # chosen on val, never on test
    export = export_model(best[0] if best else final, out / "export")
    index = index_beside_export(cfg, export)
    summary = {"steps": cfg.train.steps, "resumed_from_step": start, "init_from": cfg.train.init_from,
               "checkpoint": str(final), "export": str(export), "selected": best[1] if best else None,
               "index": str(index) if index else None,
               "metrics": {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))},
               "history": ray.get(progress.history.remote()), "seconds": round(clock.elapsed(), 1),
               "trainer_restarts": ray.get(progress.restarts.remote()),
               "placement": placement_record(ray.get(progress.placement.remote()), pool_status),
               "rollout_pool": {k: pool_status[k] for k in ("workers", "version", "restarts", "requeued_groups",
                                                            "generated_groups", "events")} if pool_status else None}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _close_pool(pool) -> dict | None:
    """The pool's final status (None when it cannot answer: the error that ended training stays the one
    raised), then shut down and killed whatever happened, so its name is free at once."""
    status = None
    try:
        status = ray.get(pool.status.remote(), timeout=60)
        ray.get(pool.shutdown.remote(), timeout=120)
    except Exception as e:  # a dead or stuck pool: say so, do not hide the run's own outcome
        print(f"rollout pool: no clean shutdown ({type(e).__name__}: {e})", flush=True)
    finally:
        ray.kill(pool)
    return status


def placement_record(trainers: dict[int, str], pool_status: dict | None) -> dict:
    """Where this run's roles ran, from its own records: the node of each trainer rank, of each rollout actor
    alive at the end and of every actor the pool ever started (restarts and `moon-ray rollout scale`
    included), and every node's custom resources, so a cluster's role split can be checked afterwards."""
    from moon_ray.infrastructure.resources import ALL

    nodes = {n["NodeID"]: {"head": "node:__internal_head__" in n.get("Resources", {}),
                           "resources": {k: v for k, v in n.get("Resources", {}).items() if k in ALL}}
             for n in ray.nodes() if n.get("Alive")}
    rollout = pool_status or {}
    record = {"trainers": {str(rank): node for rank, node in sorted(trainers.items())},
              "rollout_actors": [a["node"] for a in rollout.get("actors", [])],
              "rollout_nodes_ever": rollout.get("nodes_ever", []), "nodes": nodes}
    roles = {"trainers": set(record["trainers"].values()), "rollout actors": set(record["rollout_nodes_ever"])}
    print("placement: " + "; ".join(f"{role} on {', '.join(sorted(n[:8] for n in ids)) or '-'}"
                                    for role, ids in roles.items()), flush=True)
    return record


def index_beside_export(cfg: Config, export: Path) -> Path | None:
    """The export's catalog index, built beside it (<export>-index: the serve.index_* slice, by the Ray Data
    job of `moon-ray index`), so `moon-ray serve --model <export>` loads it at start; None when
    serve.index_after_export is off or search is (serve.index_limit=0)."""
    import dataclasses

    from moon_ray.eval.index_artifact import default_index_dir
    from moon_ray.eval.index_job import build_index_dir

    if not cfg.serve.index_after_export or cfg.serve.index_limit == 0:
        return None
    served = dataclasses.replace(cfg, serve=dataclasses.replace(cfg.serve, model=str(export), index_dir=None))
    out = default_index_dir(served)
    manifest = build_index_dir(served, out)
    print(f"indexed {manifest['count']} products beside the export in {manifest['seconds']:.0f} s: {out}", flush=True)
    return out


def start_rollout_pool(cfg: Config):
    """The rollout actors (vLLM or torch engine) on the full base LM; trainers push weights to them."""
    from moon_ray.models.weights import smollm2_dir
    from moon_ray.rollout.control import create_pool, pool_name, run_key

    r = cfg.rollout
    model_dir = cfg.model.lm.path or str(smollm2_dir())
    kwargs = {"model_dir": model_dir, "threads": r.threads}
    lora = cfg.model.lm.lora
    if r.engine == "torch" and r.sync_mode == "adapter" and lora.enabled:  # actors hold unmerged adapters
        kwargs["lora"] = {"r": lora.r, "alpha": lora.alpha, "targets": list(lora.targets)}
    if r.engine == "vllm":
        kwargs.update(max_model_len=r.max_model_len, seed=cfg.train.seed)
    key = run_key()  # a named actor of this run: `moon-ray rollout status|scale` finds it
    pool = create_pool((r.engine, kwargs, r.num_workers, r.cpus_per_worker, r.gpus_per_worker,
                        cfg.ray.use_custom_resources, r.max_restarts, r.start_timeout_s), {}, cfg.ray.namespace, key)
    print(f"rollout pool {pool_name(key)} ({r.num_workers} {r.engine} actors): moon-ray rollout status {key}", flush=True)
    return pool


def _fit_with_progress(trainer, progress, start: int, total: int):
    from tqdm import tqdm

    from moon_ray.infrastructure.console import console

    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(result=_safe_fit(trainer, box)), daemon=True)
    thread.start()
    bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True, file=console())
    while thread.is_alive():
        thread.join(timeout=2.0)
        step, metrics = ray.get(progress.latest.remote())
        if step > bar.n:
            bar.update(step - bar.n)
            bar.set_postfix({k: f"{metrics[k]:.3g}" for k in ("loss", "text_acc", "image_acc", "reward_mean", "samples_per_s") if k in metrics})
    bar.close()
    if "error" in box:
        raise box["error"]
    return box["result"]


def _safe_fit(trainer, box: dict):
    try:
        return trainer.fit()
    except BaseException as e:  # surfaced on the main thread
        box["error"] = e
        return None


@ray.remote(num_cpus=0)
class ProgressActor:
    """Rank 0 pushes (step, metrics); the driver polls it for the progress bar."""

    def __init__(self):
        self.step, self.metrics, self.rows, self.restored, self.nodes = 0, {}, [], [], {}
        self.starts = 0

    def started(self, step: int) -> None:
        """Rank 0 (re)started at `step`. Every start after the first is Ray Train restarting the group:
        from the latest checkpoint its controller had registered, or from the run's start (step 0, or the
        driver's resume point) when the failure came before any was registered."""
        self.starts += 1
        if self.starts > 1:
            self.restarted(step)

    def update(self, step: int, metrics: dict) -> None:
        self.step, self.metrics = step, metrics
        self.rows.append(metrics)

    def restarted(self, step: int) -> None:
        """Ray Train restarted the worker group at `step`: later rows are redone."""
        self.restored.append(step)
        self.rows = [r for r in self.rows if r.get("step", 0) <= step]
        print(f"trainer workers restarted at step {step} (train.max_failures)", flush=True)

    def restarts(self) -> list[int]:
        return self.restored

    def placed(self, rank: int, node: str) -> None:
        """A trainer rank started on `node` (again, after a restart: the latest place counts)."""
        self.nodes[rank] = node

    def placement(self) -> dict[int, str]:
        return dict(self.nodes)

    def latest(self):
        return self.step, self.metrics

    def history(self):
        return self.rows
