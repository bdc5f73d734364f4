"""`moon-ray traces`: one greedy reasoning trace per catalog product, generated once on rollout engines
and stored in the product shards, so that evaluation and index building reuse them.

    moon-ray traces --model outputs/train-joint/export                    # vLLM when importable, else torch
    moon-ray traces --model outputs/train-joint/export --engine torch rollout.num_workers=2
    moon-ray eval --model outputs/train-joint/export                      # "eval: reusing 1536 stored traces ..."
    moon-ray index --model outputs/train-joint/export                     # "index: reusing 9583 stored traces ..."

The rule (DESIGN.md, "the reasoning policy"): a model that reasons embeds a product with the trace its
policy writes greedily (no sampling) from the product's image and title, at most the export's
`rollout.max_tokens` new tokens, in the prompt of models/reasoning.py: the same trace in evaluation,
index building and serving (`input_type: document`). Generating it is most of the cost of embedding
a product (the joint model's eval took 1,135 s against 252 s without traces), so this job makes it
once per policy version.

The job: the products of data.output_dir (serve.index_split, serve.index_limit, catalog order) go
through Ray Data `map_batches` over `rollout.num_workers` actors of `rollout.cpus_per_worker` CPUs and
`rollout.gpus_per_worker` GPUs, `serve.index_batch_size` products per call. Each actor loads the
export (its vision tower and projector make the prompt embeddings), writes the export's language
model with its LoRA merged as a Hugging Face directory, and builds a rollout engine on it with
`moon_ray.rollout.base.create_engine` (`rollout.engine`: vllm, falling back to torch where vLLM is not
installed). vLLM decodes greedily itself (temperature 0); the torch engine's `generate` always samples
(transformers refuses temperature 0 with sampling on), so its model decodes with sampling off here,
as `generate_reasoning` does.

The traces go back into every product shard (each rewritten beside itself, then renamed over it) as
two columns: `reasoning` (the trace) and `reasoning_version` (`index_artifact.policy_version`: the
export's weights and config fingerprint). Products outside the slice keep what they had. A model that
does not reason (rollout.enabled false in its config, or a baseline) has no traces: the job refuses it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from moon_ray.config import Config, ConfigError
from moon_ray.eval.data import TRACE_COLUMN, TRACE_VERSION_COLUMN

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------- the engine
def write_policy_lm(model, out: Path) -> Path:
    """The embedder's language model with its LoRA adapters merged (weight_sync's merged weights, the ones
    training pushes to the rollout actors), as a Hugging Face model directory a rollout engine loads."""
    from safetensors.torch import save_file

    from moon_ray.models.language import causal_lm
    from moon_ray.weight_sync.base import merged_weights

    merged = dict(merged_weights(model.lm))
    state = {}
    for name, p in model.lm.named_parameters():
        if "lora_" in name:
            continue
        clean = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        state[clean] = merged.get(clean, p.detach().float().cpu()).contiguous()
    out.mkdir(parents=True, exist_ok=True)
    causal_lm(model.lm).config.save_pretrained(out)
    save_file(state, str(out / "model.safetensors"))
    model.tokenizer.save_pretrained(out)
    return out


def engine_name(wanted: str) -> str:
    """`wanted`, except vllm where vLLM is not installed: torch then."""
    if wanted not in ("vllm", "torch"):
        raise ConfigError(f"rollout.engine: expected vllm or torch, got {wanted!r}")
    if wanted == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            return "torch"
    return wanted


def greedy_traces(engine, prompts: list, max_tokens: int) -> list[str]:
    """One greedy trace per prompt embedding (L_i, H) from a rollout engine."""
    from moon_ray.rollout.base import SamplingConfig
    from moon_ray.rollout.torch_engine import TorchEngine

    if not isinstance(engine, TorchEngine):
        greedy = SamplingConfig(n=1, max_tokens=max_tokens, temperature=0.0)
        return [group[0].text for group in engine.generate(prompts, greedy)]
    import torch

    longest, hidden = max(p.shape[0] for p in prompts), prompts[0].shape[1]
    dtype = next(engine.model.parameters()).dtype
    embeds = torch.zeros(len(prompts), longest, hidden, dtype=dtype)
    mask = torch.zeros(len(prompts), longest, dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding, as batched generation needs
        embeds[i, longest - p.shape[0] :] = p.to(dtype)
        mask[i, longest - p.shape[0] :] = 1
    with torch.no_grad():
        out = engine.model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_tokens,
                                    do_sample=False, pad_token_id=engine.pad_id)
    return [t.strip() for t in engine.tokenizer.batch_decode(out, skip_special_tokens=True)]


class PolicyEngine:
    """A model that reasons, with a rollout engine over its merged LM: `traces(images, titles)` gives each
    product's greedy trace (the export's vision tower and projector make the prompt embeddings)."""

    def __init__(self, encoder, engine: str, threads: int):
        from moon_ray.rollout.base import create_engine

        self.model, self.max_tokens = encoder.model, encoder.cfg.rollout.max_tokens
        self.dir = tempfile.TemporaryDirectory(prefix="moon-ray-policy-",
                                               dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        lm_dir = write_policy_lm(self.model, Path(self.dir.name))
        kwargs = {"model_dir": str(lm_dir), "threads": max(1, threads)}
        if engine == "vllm":
            kwargs.update(max_model_len=encoder.cfg.rollout.max_model_len)
        self.name = engine
        self.engine = create_engine(engine, **kwargs)

    def traces(self, images: list[bytes], titles: list[str]) -> list[str]:
        import torch

        from moon_ray.models.reasoning import build_prompt_embeds

        with torch.no_grad():
            prompts = build_prompt_embeds(self.model, self.model.pixels(images), titles)
        unpadded = [prompts.embeds[i][prompts.mask[i].bool()].float().cpu() for i in range(len(titles))]
        return greedy_traces(self.engine, unpadded, self.max_tokens)


class TraceActor:
    """Ray Data actor: a PolicyEngine over the export; a batch of products (row, image, title) -> (row, trace)."""

    def __init__(self, model: str, engine: str, threads: int, device: str):
        import torch

        from moon_ray.eval.index_artifact import product_encoder

        torch.set_num_threads(max(1, threads))
        self.policy = PolicyEngine(product_encoder(model, device), engine, threads)

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        traces = self.policy.traces(batch.column("image").to_pylist(), batch.column("title").to_pylist())
        return {"row": batch.column("row").to_numpy(), "trace": np.array(traces, dtype=object)}


# -------------------------------------------------------------------------------------------- the job
def generate_traces(cfg: Config, table: pa.Table, engine: str) -> dict[int, str]:
    """{catalog row: greedy trace} of `table`'s products (row, image, title) on the rollout actors."""
    import ray

    from moon_ray.infrastructure.resources import ROLLOUT, request

    r, bs, n = cfg.rollout, cfg.serve.index_batch_size, table.num_rows
    work = table.select(["row", "image", "title"])
    per_block = bs * max(1, -(-n // (4 * r.num_workers * bs)))  # about 4 blocks per actor, whole batches each
    blocks = [work.slice(i, per_block) for i in range(0, n, per_block)]
    extra = {"num_gpus": r.gpus_per_worker} if r.gpus_per_worker else {}
    ds = ray.data.from_blocks(blocks).map_batches(
        TraceActor,
        fn_constructor_kwargs={"model": cfg.serve.model, "engine": engine, "threads": max(1, r.threads),
                               "device": "cuda" if r.gpus_per_worker else "cpu"},
        batch_size=bs, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=r.num_workers),
        num_cpus=r.cpus_per_worker, resources=request(ROLLOUT, cfg.ray.use_custom_resources), **extra,
    )
    traces: dict[int, str] = {}
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        traces.update({int(row): str(t) for row, t in zip(batch["row"], batch["trace"], strict=True)})
    if len(traces) != n:
        raise RuntimeError(f"the traces job lost products: {n - len(traces)} of {n} came back without a trace")
    return traces


def write_traces(catalog: str | Path, traces: dict[int, str], version: str) -> int:
    """Put `traces` (catalog row -> trace) and `version` into the product shards' `reasoning` and
    `reasoning_version` columns; other rows keep theirs. Each shard is written beside itself (a dot
    file, which readers skip) and renamed over it. Returns the number of rows given a trace."""
    import pyarrow.parquet as pq

    written = 0
    for shard in sorted((Path(catalog) / "products").glob("*.parquet")):
        table = pq.read_table(shard)
        rows = table.column("row").to_pylist()
        old = {c: table.column(c).to_pylist() if c in table.column_names else [None] * len(rows)
               for c in (TRACE_COLUMN, TRACE_VERSION_COLUMN)}
        text = [traces.get(r, t) for r, t in zip(rows, old[TRACE_COLUMN], strict=True)]
        versions = [version if r in traces else (None if v is None else str(v))
                    for r, v in zip(rows, old[TRACE_VERSION_COLUMN], strict=True)]
        written += sum(r in traces for r in rows)
        table = table.drop_columns([c for c in (TRACE_COLUMN, TRACE_VERSION_COLUMN) if c in table.column_names])
        table = table.append_column(TRACE_COLUMN, pa.array(text, pa.string()))
        table = table.append_column(TRACE_VERSION_COLUMN, pa.array(versions, pa.string()))
        tmp = shard.with_name(f".{shard.name}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, shard)
    return written


def run_traces(cfg: Config) -> dict:
    """Generate and store the traces of serve.model's policy for the catalog slice; a summary."""
    from moon_ray.eval.index_artifact import load_products, model_identity, policy_version
    from moon_ray.infrastructure.runtime import init_ray
    from moon_ray.infrastructure.timing import Stopwatch

    identity = model_identity(cfg.serve.model)
    version = policy_version(identity)
    if version is None:
        raise ConfigError(f"serve.model: {cfg.serve.model} does not reason (a baseline, or an export trained with "
                          "rollout.enabled=false): it embeds products without traces, so there are none to store")
    engine = engine_name(cfg.rollout.engine)
    table = load_products(cfg)
    init_ray(cfg.ray)
    clock = Stopwatch()
    traces = generate_traces(cfg, table, engine)
    seconds = clock.elapsed()
    written = write_traces(cfg.data.output_dir, traces, version)
    return {"products": table.num_rows, "written": written, "policy_version": version, "engine": engine,
            "model": identity["name"], "catalog": str(Path(cfg.data.output_dir).resolve()),
            "seconds": round(seconds, 1)}


# ------------------------------------------------------------------------------------------------ CLI
def add_traces_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="an exported model directory that reasons (serve.model)")
    p.add_argument("--engine", choices=("vllm", "torch"),
                   help="rollout engine (rollout.engine; vllm falls back to torch where it is not installed)")


def cli_traces(args) -> int:
    """`moon-ray traces --model EXPORT [--engine E] [overrides]`: store the catalog's traces, say where."""
    from moon_ray.eval.index_job import index_config

    cfg = index_config(args.config, list(args.overrides), args.model)
    if args.engine:
        cfg = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, engine=args.engine))
    out = run_traces(cfg)
    print(f"{out['written']} traces of {out['model']} (policy {out['policy_version']}, {out['engine']} engine) in "
          f"{out['seconds']:.0f} s, stored in {out['catalog']}/products (columns {TRACE_COLUMN}, "
          f"{TRACE_VERSION_COLUMN})\nreused by: moon-ray eval --model {cfg.serve.model}; moon-ray index --model "
          f"{cfg.serve.model}")
    return 0
