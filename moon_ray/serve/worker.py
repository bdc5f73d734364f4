"""The model in its own process beside the replica: `python -m moon_ray.serve.worker FD`.

    worker = ModelWorker(model_spec(cfg))         # {"model", "device", "threads", "batch_size", "nice"}
    worker.info                                   # {"name", "dim", "dimensions", "can_reason", "reasons"}
    vecs, tokens = worker.call("encode", images, texts)
    worker = ModelWorker(spec, wait=False)        # the load runs in the child while the caller loads the index
    worker.wait_ready()

Why a process: a replica's event loops (Serve's and the ASGI app's) are Python threads. A model thread
in the same process takes the GIL for every Python step of its forward pass: in a measurement on this
project's 2-CPU machine, a thread running the frozen encoder cut the request-handling rate of a
neighbouring Python thread from ~370/s to ~220/s. In its own process the model shares no GIL with the
loops, and a crash, an out-of-memory kill or a hang of the model costs the requests in flight, not the
replica.

The child is started with `subprocess` (not multiprocessing: a Ray worker's __main__ must not be
re-imported) and talks over a socket pair with `multiprocessing.connection` framing (pickle). Calls are
serialised by a lock. If the child dies (a crash, the OOM killer), the call in flight fails with
`WorkerDied`, and a new child is started for the next call: the replica lives on. It exits by itself
when the replica goes away (its end of the socket closes).

Operations (run in the child on the encoder, `moon_ray.models.encoder.get_encoder(model)`):

| op              | arguments        | result                                                       |
| --------------- | ---------------- | ------------------------------------------------------------ |
| encode          | images, texts    | (float32 (N, D) unit rows, tokens of each text): queries     |
| encode_products | images, titles   | float32 (N, D): the catalog side                             |
| embed_products  | images, titles, traces | (float32 (N, D), traces used or None): as `moon-ray index` |
| documents       | images, titles   | (vectors, traces or None, tokens of titles, tokens of traces or None) |

`spec["nice"]` (optional) lowers the child's CPU priority by that much: the reasoning deployment's
model process yields the shared cores to the embedding one (serve.reasoning_nice).

Documents (`input_type: document`) are embedded exactly as the index embeds products
(`index_artifact.embed_products`): a model that reasons (`info["reasons"]`) writes its greedy trace
for each (`generate_reasoning`, the export's rollout.max_tokens) and embeds image + title + trace; the
others embed image + title. With `spec["engine"]` vllm or torch (serve.reasoning_engine) a rollout
engine over the export's merged LM writes the traces instead (eval/traces_job.py `PolicyEngine`, the
same as `moon-ray traces`). Queries never get a trace: training embeds them without one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from moon_ray.config import Config
from moon_ray.models.encoder import Encoder

STARTUP_TIMEOUT_S = 900.0
CALL_TIMEOUT_S = 600.0


def model_spec(cfg: Config, reasoning: bool = False) -> dict:
    """What a replica's model process loads: serve.model on the replica's device with max(1, int(cpus))
    threads; for the reasoning deployment (`reasoning`) with its own CPUs, GPUs, batch and niceness."""
    s = cfg.serve
    cpus, gpus, batch, nice = ((s.reasoning_cpus_per_replica, s.reasoning_gpus_per_replica, s.reasoning_batch_size,
                                s.reasoning_nice) if reasoning else
                               (s.cpus_per_replica, s.gpus_per_replica, s.max_batch_size, 0))
    return {"model": s.model, "device": "cuda" if gpus > 0 else "cpu", "threads": max(1, int(cpus)),
            "batch_size": batch, "nice": nice, "engine": s.reasoning_engine if reasoning else "hf"}


class ModelReplica:
    """A Serve replica that owns a model process (`self.worker`) and the thread that waits on it
    (`self.executor`): both go when the replica does."""

    worker: ModelWorker | None = None
    executor = None

    def __del__(self):
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
        if self.worker is not None:
            self.worker.close()


class WorkerDied(RuntimeError):
    """The model process exited (or stopped answering) during a call; a new one serves the next call."""


class ModelWorker:
    """A child process holding the encoder; `call` runs one operation there."""

    def __init__(self, spec: dict, wait: bool = True):
        self.spec = dict(spec)
        self.lock = threading.Lock()
        self.info: dict = {}
        self.proc: subprocess.Popen | None = None
        self.conn: Connection | None = None
        self._spawn()
        if wait:
            self.wait_ready()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        """Whether the model process is up (it is restarted by the next call when not)."""
        return self.proc is not None and self.proc.poll() is None and bool(self.info)

    def _start(self) -> None:
        self._spawn()
        self.wait_ready()

    def _spawn(self) -> None:
        """Start the child and send it the spec; it loads the model while the caller goes on."""
        parent, child = socket.socketpair()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "moon_ray.serve.worker", str(child.fileno())],
                                     pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, env=env,
                                     cwd=str(Path(__file__).resolve().parents[2]))
        child.close()
        self.conn = Connection(parent.detach())
        self.conn.send(self.spec)

    def wait_ready(self) -> None:
        """Block until the child has loaded the model (self.info set), or raise RuntimeError."""
        if not self.conn.poll(STARTUP_TIMEOUT_S):
            self.close()
            raise RuntimeError(f"the model process did not load {self.spec['model']!r} in {STARTUP_TIMEOUT_S:.0f} s")
        try:
            ok, value = self.conn.recv()
        except EOFError:
            code = self.proc.wait()
            self.close()
            raise RuntimeError(f"the model process exited ({code}) while loading {self.spec['model']!r}; "
                               "see the replica's log") from None
        if not ok:
            self.close()
            raise RuntimeError(f"the model process could not load {self.spec['model']!r}: {value[1]}")
        self.info = value

    def ensure(self) -> None:
        """Start a new model process if the last one died (readiness probes call this)."""
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self.close()
                self._start()

    def call(self, op: str, *args):
        """Run `op(*args)` in the child; its ValueError comes back as ValueError, other errors as RuntimeError."""
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self.close()
                self._start()
            elif not self.info:  # started with wait=False and still loading: the first call waits for it
                self.wait_ready()
            try:
                self.conn.send((op, args))
                if not self.conn.poll(CALL_TIMEOUT_S):
                    raise TimeoutError(f"no answer in {CALL_TIMEOUT_S:.0f} s")
                ok, value = self.conn.recv()
            except (EOFError, OSError, TimeoutError) as e:
                code = self.proc.poll()
                self.close()
                raise WorkerDied(f"the model process stopped during {op!r} (exit code {code}: {e}); "
                                 "it is restarted for the next request") from None
        if ok:
            return value
        kind, message = value
        raise (ValueError if kind == "ValueError" else RuntimeError)(message)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None


class ProcessEncoder(Encoder):
    """The `Encoder` interface over a ModelWorker (used to build the catalog index at replica start)."""

    def __init__(self, worker: ModelWorker):
        self.worker = worker
        self.name = worker.info["name"]
        self.dim = int(worker.info["dim"])

    def encode(self, images, texts) -> np.ndarray:
        return self.worker.call("encode", list(images), list(texts))[0]

    def encode_products(self, images, titles) -> np.ndarray:
        return self.worker.call("encode_products", list(images), list(titles))

    def embed_products(self, images, titles, traces=None):
        """(vectors, traces used or None): products as `moon-ray index` embeds them (for the fallback build)."""
        return self.worker.call("embed_products", list(images), list(titles), traces)


# ------------------------------------------------------------------------------------- the child
def load(spec: dict):
    from moon_ray.eval.index_artifact import product_encoder

    return product_encoder(spec["model"], spec["device"], spec["batch_size"])


def rollout_policy(encoder, spec: dict):
    """A rollout engine writing the traces of a model that reasons (spec["engine"] vllm or torch:
    serve.reasoning_engine), or None: the LM's own generate (hf), or a model that does not reason."""
    from moon_ray.eval.index_artifact import reasons

    if spec.get("engine", "hf") == "hf" or not reasons(encoder):
        return None
    from moon_ray.eval.traces_job import PolicyEngine, engine_name

    return PolicyEngine(encoder, engine_name(spec["engine"]), spec["threads"])


def describe(encoder) -> dict:
    from moon_ray.eval.index_artifact import reasons
    from moon_ray.serve.validation import allowed_dimensions

    return {"name": encoder.name, "dim": int(encoder.dim), "dimensions": list(allowed_dimensions(encoder)),
            "can_reason": getattr(moon_model(encoder), "can_reason", moon_model(encoder) is not None),
            "reasons": reasons(encoder)}


def moon_model(encoder):
    """The MoonEmbedder of an exported model (it has an LM), else None."""
    model = getattr(encoder, "model", None)
    return model if hasattr(model, "lm") else None


def tokenizer_of(encoder):
    return getattr(encoder, "tokenizer", None) or getattr(moon_model(encoder), "tokenizer", None)


def encode(encoder, images, texts):
    from moon_ray.serve.validation import count_tokens

    tok = tokenizer_of(encoder)
    vecs = np.asarray(encoder.encode(images, texts), dtype=np.float32)
    return vecs, [count_tokens(tok, [t]) if t else 0 for t in texts]


def encode_products(encoder, images, titles):
    return np.asarray(encoder.encode_products(images, titles), dtype=np.float32)


def embed_products(encoder, images, titles, traces):
    from moon_ray.eval.index_artifact import embed_products as embed

    return embed(encoder, images, titles, traces)


def documents(encoder, images, titles, policy=None):
    """Products as the index embeds them, with the token counts of titles and traces (None: no traces).
    `policy` (a traces_job.PolicyEngine) writes the traces on a rollout engine instead of the LM's generate."""
    from moon_ray.serve.validation import count_tokens

    given = policy.traces(list(images), list(titles)) if policy is not None else None
    vecs, traces = embed_products(encoder, images, titles, given)
    tok = tokenizer_of(encoder)
    return (vecs, traces, [count_tokens(tok, [t]) for t in titles],
            [count_tokens(tok, [t]) for t in traces] if traces is not None else None)


def serve_forever(conn: Connection) -> None:
    """The child's loop: load the encoder named in the first message, then answer (op, args) messages."""
    spec = conn.recv()
    try:
        import torch

        if spec.get("nice"):
            os.nice(int(spec["nice"]))
        torch.set_num_threads(spec["threads"])
        encoder = load(spec)
        policy = rollout_policy(encoder, spec)
        conn.send((True, describe(encoder)))
    except Exception as e:
        conn.send((False, (type(e).__name__, f"{type(e).__name__}: {e}")))
        return
    ops = {"encode": encode, "encode_products": encode_products, "embed_products": embed_products,
           "documents": lambda enc, images, titles: documents(enc, images, titles, policy)}
    while True:
        try:
            op, args = conn.recv()
        except (EOFError, OSError):
            return  # the replica is gone
        try:
            conn.send((True, ops[op](encoder, *args)))
        except Exception as e:
            conn.send((False, (type(e).__name__, f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e))))


if __name__ == "__main__":
    serve_forever(Connection(int(sys.argv[1])))


def replica_actor_options(cfg, cpus: float, gpus: float) -> dict:
    """`ray_actor_options` of a Serve replica: its CPUs, GPUs if any, and the serve custom resource
    when `ray.use_custom_resources` is on."""
    from moon_ray.infrastructure.resources import SERVE, request

    actor: dict = {"num_cpus": cpus}
    if gpus:
        actor["num_gpus"] = gpus
    custom = request(SERVE, cfg.ray.use_custom_resources)
    if custom:
        actor["resources"] = custom
    return actor
