"""Config sections of the index, evaluation and the Serve deployment."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from moon_ray.configlib import ConfigError, opt


# -------------------------------------------------------------------------------------------- index
@dataclass(frozen=True)
class IndexConfig:
    """FAISS parameters shared by evaluation, index building and serving (eval.index / serve.index
    choose flat or hnsw)."""

    hnsw_m: int = opt(32, "HNSW graph degree M.")
    hnsw_ef_construction: int = opt(200, "HNSW efConstruction.")
    hnsw_ef_search: int = opt(128, "HNSW efSearch.")

    def validate(self) -> None:
        if min(self.hnsw_m, self.hnsw_ef_construction, self.hnsw_ef_search) < 1:
            raise ConfigError("index: hnsw_m, hnsw_ef_construction and hnsw_ef_search must be >= 1")


# --------------------------------------------------------------------------------------------- eval
@dataclass(frozen=True)
class EvalConfig:
    model: str = opt("frozen", "A baseline name (frozen, random) or an exported model directory.")
    split: str = opt("test", "Which split of the preprocessed catalog to evaluate on.")
    limit: int | None = opt(None, "Evaluate on at most this many products of the split (None: all).")
    output_dir: str = opt("outputs/eval", "Where results (JSON, Markdown, plots) are written.")
    batch_size: int = opt(64, "Items per embedding batch.")
    num_actors: int = opt(2, "Embedding actors in the Ray Data actor pool.")
    cpus_per_actor: float = opt(1.0, "CPUs per embedding actor (fractions allowed).")
    gpus_per_actor: float = opt(0.0, "GPUs per embedding actor (fractions allowed; 0: CPU only).")
    index: str = opt("flat", "FAISS index for retrieval: flat (exact) or hnsw.")
    seed: int = opt(0, "Seed of the deterministic image degradations.")
    zero_shot: tuple[str, ...] = opt(
        ("article_type", "colour", "gender", "season", "usage"),
        "Product attributes classified zero-shot (nearest label prompt).",
    )
    low_res: bool = opt(
        True,
        "Also score the low-resolution variants, beside the full-resolution numbers: the catalog "
        "embedded from its images shrunk to 60x80 shop thumbnails (JPEG; the encoder scales them "
        "back up): image->product, image+text->product and text->product against that index "
        "(`*_lowres` metrics) and the KAGL tasks on low-res documents (`<task>-lowres`). About one "
        "more product pass of embedding.",
    )

    def validate(self) -> None:
        if self.index not in ("flat", "hnsw"):
            raise ConfigError(f"eval.index: expected flat or hnsw, got {self.index!r}")
        if self.batch_size < 1 or self.num_actors < 1 or self.cpus_per_actor <= 0 or self.gpus_per_actor < 0:
            raise ConfigError(
                "eval: batch_size and num_actors must be >= 1, cpus_per_actor > 0, gpus_per_actor >= 0"
            )
        if self.limit is not None and self.limit < 1:
            raise ConfigError("eval.limit must be >= 1 (or null for the whole split)")
        fields = (
            "article_type",
            "colour",
            "gender",
            "season",
            "usage",
            "master_category",
            "sub_category",
            "material",
            "brand",
        )
        bad = [f for f in self.zero_shot if f not in fields]
        if bad:
            raise ConfigError(
                f"eval.zero_shot: unknown product field {bad[0]!r} (known: {', '.join(fields)})"
            )


# -------------------------------------------------------------------------------------------- serve
@dataclass(frozen=True)
class ServeConfig:
    model: str = opt("frozen", "A baseline name or an exported model directory to serve.")
    host: str = opt("127.0.0.1", "Bind address of the HTTP proxy (127.0.0.1 unless told otherwise).")
    port: int = opt(8000, "HTTP port.")
    route_prefix: str = opt("/", "Route prefix of the application.")
    index_dir: str | None = opt(
        None,
        "A prebuilt catalog index directory (`moon-ray index`). None: the model's default place (beside an "
        "export: <export>-index; a baseline: index-<name> beside data.output_dir); when none is there, the "
        "catalog is embedded at replica start if serve.index_build_at_start.",
    )
    index_build_at_start: bool = opt(
        True,
        "Fallback when no prebuilt index exists: embed data.output_dir's products at replica start "
        "(minutes; false: refuse to start). An explicit serve.index_dir must exist.",
    )
    index_actors: int = opt(2, "`moon-ray index`: encoder actors in the Ray Data actor pool.")
    index_cpus_per_actor: float = opt(
        1.0, "`moon-ray index`: CPUs per encoder actor (torch uses max(1, int(cpus)) threads)."
    )
    index_gpus_per_actor: float = opt(0.0, "`moon-ray index`: GPUs per encoder actor (fractions allowed).")
    index: str = opt("flat", "FAISS index kind for /v1/search: flat or hnsw.")
    index_split: str | None = opt(None, "Index only this split of the catalog (None: every product).")
    index_limit: int | None = opt(None, "Index at most this many products (None: all).")
    api_key: str | None = opt(
        None,
        "Bearer token(s) required on /v1/*: one key, or several separated by commas, each optionally "
        "named as name:key (None: $MOON_RAY_API_KEY if set).",
    )
    auth: str = opt(
        "auto",
        "required: refuse to start without an API key; open: serve without one; auto: required unless "
        "serve.host is a loopback address.",
    )
    rate_limit_requests_per_s: float = opt(
        0.0,
        "Per API key and replica: requests per second (token bucket; "
        "0: no limit). Over the limit: status 429 and a Retry-After header.",
    )
    rate_limit_request_burst: int = opt(
        0, "Requests a key may send at once above the rate (0: one second's worth)."
    )
    rate_limit_items_per_s: float = opt(
        0.0,
        "Per API key and replica: input items (embedded texts/images) per "
        "second (token bucket; 0: no limit).",
    )
    rate_limit_item_burst: int = opt(
        0, "Items a key may send at once (0: the larger of one second's worth and serve.max_inputs)."
    )
    max_body_bytes: int = opt(8_000_000, "Requests with a larger body are refused (413).")
    max_inputs: int = opt(64, "Most inputs in one /v1/embeddings request.")
    max_image_pixels: int = opt(16_000_000, "Images with more pixels are refused (400).")
    max_text_chars: int = opt(2000, "Longest text input, in characters.")
    max_batch_size: int = opt(32, "Dynamic batching (@serve.batch): most items per model call.")
    batch_wait_timeout_s: float = opt(0.01, "Dynamic batching: longest wait to fill a batch.")
    num_replicas: int = opt(1, "Replicas when autoscaling is off.")
    autoscaling: bool = opt(False, "Autoscale replicas between min_replicas and max_replicas.")
    min_replicas: int = opt(1, "Autoscaling minimum.")
    max_replicas: int = opt(2, "Autoscaling maximum.")
    target_ongoing_requests: float = opt(8.0, "Autoscaling target of ongoing requests per replica.")
    cpus_per_replica: float = opt(
        1.0, "CPUs per replica (fractions allowed; torch uses max(1, int(cpus)) threads)."
    )
    gpus_per_replica: float = opt(0.0, "GPUs per replica (fractions allowed; 0: CPU only).")
    max_ongoing_requests: int = opt(
        128,
        "Requests a replica accepts at once; above max_batch_size, or dynamic batching cannot fill batches.",
    )
    access_log: bool = opt(
        True, "Log every request (replicas and proxy); off saves CPU at high request rates."
    )
    max_top_k: int = opt(100, "Largest k of a /v1/search request.")
    index_batch_size: int = opt(
        32, "Products per encode call when the catalog index is built (job or start)."
    )
    index_after_export: bool = opt(
        True,
        "`moon-ray train`: once the model is exported, build its catalog index beside it (<export>-index, "
        "the serve.index_* slice and actors), so `moon-ray serve --model <export>` loads it at start.",
    )
    reasoning_max_tokens: int = opt(
        48,
        "Not read any more: a document's trace has the served model's own rollout.max_tokens, as in training "
        "and its index. Kept so that configs (and exports) written with it still load.",
    )
    reasoning: bool = opt(
        True,
        "Embed documents (input_type=document) of a model that reasons in their own deployment, "
        "MoonReasoner (a trace is generated per product); false: no such deployment, those requests get 400.",
    )
    reasoning_engine: str = opt(
        "hf",
        "What writes a document's trace in the reasoning deployment: hf (the embedder's own LM, transformers "
        "generate, greedy: the traces evaluation and `moon-ray index` generate), or a rollout engine over the "
        "export's merged LM, vllm or torch (moon_ray/rollout; greedy). vLLM's traces can differ from hf's where "
        "two tokens nearly tie: then store the catalog's with `moon-ray traces --engine vllm` before "
        "`moon-ray index`, so that the index and the API agree.",
    )
    reasoning_replicas: int = opt(1, "Replicas of the reasoning deployment.")
    reasoning_cpus_per_replica: float = opt(
        1.0, "CPUs per reasoning replica (torch uses max(1, int(cpus)) threads)."
    )
    reasoning_gpus_per_replica: float = opt(0.0, "GPUs per reasoning replica.")
    reasoning_max_inputs: int = opt(8, "Most inputs in one reasoning=true request (each is a generation).")
    reasoning_batch_size: int = opt(
        8, "Most generations in one model call; waiting inputs of several requests are batched together."
    )
    reasoning_batch_wait_s: float = opt(
        0.02, "Wait this long for more inputs before a generation batch starts on an idle reasoner."
    )
    reasoning_max_ongoing: int = opt(
        8, "Reasoning requests a reasoning replica takes at once (its concurrency cap)."
    )
    reasoning_max_queued: int = opt(
        16,
        "Reasoning requests waiting for a reasoning replica, per caller; beyond that: 503 with Retry-After.",
    )
    reasoning_timeout_s: float = opt(120.0, "A reasoning request not answered in this time gets 504.")
    reasoning_nice: int = opt(
        5,
        "Niceness added to the reasoning model process, so that on shared cores "
        "embedding requests win the CPU (0: same priority).",
    )
    creative_model: str | None = opt(
        None,
        "A creative selector directory (`moon-ray creative train` output) served at POST "
        "/v1/creative/select beside the embeddings, on replicas of its own (None: that route answers 404).",
    )
    creative_replicas: int = opt(1, "Replicas of the creative selection deployment.")
    creative_cpus_per_replica: float = opt(1.0, "CPUs per creative selection replica (torch threads: max(1, int)).")
    creative_batch_size: int = opt(8, "Most pairs answered in one generation batch of a creative replica.")
    creative_timeout_s: float = opt(120.0, "A creative selection not answered in this time gets 504.")

    def validate(self) -> None:
        if self.index not in ("flat", "hnsw"):
            raise ConfigError(f"serve.index: expected flat or hnsw, got {self.index!r}")
        if self.auth not in ("auto", "required", "open"):
            raise ConfigError(f"serve.auth: expected auto, required or open, got {self.auth!r}")
        if self.index_limit is not None and self.index_limit < 0:
            raise ConfigError("serve.index_limit must be >= 0 (0: no catalog index, /v1/search off)")
        for bound, holds, names in SERVE_BOUNDS:
            bad = [name for name in names if not holds(getattr(self, name))]
            if bad:
                raise ConfigError(f"serve.{bad[0]} must be {bound}")
        if self.min_replicas > self.max_replicas:
            raise ConfigError("serve.min_replicas must be <= serve.max_replicas")
        if not self.route_prefix.startswith("/"):
            raise ConfigError(f"serve.route_prefix must start with '/', got {self.route_prefix!r}")
        if self.rate_limit_items_per_s and 0 < self.rate_limit_item_burst < self.max_inputs:
            raise ConfigError(
                f"serve.rate_limit_item_burst={self.rate_limit_item_burst} is below serve.max_inputs="
                f"{self.max_inputs}: a request of max_inputs items could never pass"
            )
        if self.reasoning_engine not in ("hf", "vllm", "torch"):
            raise ConfigError(f"serve.reasoning_engine: expected hf, vllm or torch, got {self.reasoning_engine!r}")
        if not 0 <= self.reasoning_nice <= 19:
            raise ConfigError("serve.reasoning_nice must be between 0 and 19")


# serve fields by the bound each must meet: counts >= 1; rates, bursts, GPUs and waits >= 0 (0: off or
# none); CPUs and timeouts > 0. The error names the first field that misses its bound.
SERVE_BOUNDS: tuple[tuple[str, Callable[[float], bool], tuple[str, ...]], ...] = (
    (">= 1", lambda v: v >= 1,
     ("port", "max_body_bytes", "max_inputs", "max_image_pixels", "max_text_chars", "max_batch_size",
      "num_replicas", "min_replicas", "max_replicas", "max_ongoing_requests", "max_top_k", "index_batch_size",
      "reasoning_max_tokens", "index_actors", "reasoning_replicas", "reasoning_max_inputs",
      "reasoning_batch_size", "reasoning_max_ongoing", "reasoning_max_queued", "creative_replicas",
      "creative_batch_size")),
    (">= 0", lambda v: v >= 0,
     ("rate_limit_requests_per_s", "rate_limit_items_per_s", "rate_limit_request_burst", "rate_limit_item_burst",
      "gpus_per_replica", "index_gpus_per_actor", "reasoning_gpus_per_replica", "batch_wait_timeout_s",
      "reasoning_batch_wait_s")),
    ("> 0", lambda v: v > 0,
     ("cpus_per_replica", "index_cpus_per_actor", "reasoning_cpus_per_replica", "reasoning_timeout_s",
      "creative_cpus_per_replica", "creative_timeout_s")),
)
