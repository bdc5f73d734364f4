"""vLLM worker extension: in-place weight updates inside vLLM's worker (`collective_rpc`).

Loaded by vLLM through `worker_extension_cls="moon_ray.rollout.vllm_ext.WeightUpdateExtension"`, so
its methods run on every vLLM worker with `self.model_runner` at hand. Weights arrive as a
safetensors file (on /dev/shm when available) of Hugging Face-named tensors; `reload_weights` maps
them onto vLLM's fused layers (qkv_proj, gate_up_proj).
"""

from __future__ import annotations


class WeightUpdateExtension:
    def moon_reload_weights(self, path: str) -> int:
        from safetensors import safe_open

        with safe_open(path, framework="pt", device="cpu") as f:
            names = list(f.keys())

            def tensors():
                for name in names:
                    yield name, f.get_tensor(name)

            self.model_runner.reload_weights(weights_iterator=tensors())
        return len(names)
