"""Custom Ray resource names: the contract between the cluster definitions (cluster/) and the code.

On a cluster started from `cluster/` (ray up or KubeRay), node groups declare these resources so that
rollout actors, trainers and Serve replicas land on the right machines. The code requests them only
when `ray.use_custom_resources=true`; a laptop's local Ray has none of them.
"""

import math

TRAINER = "moon_trainer"  # one unit per training worker slot (GPU group)
ROLLOUT = "moon_rollout"  # one unit per rollout actor slot (CPU or GPU group)
SERVE = "moon_serve"  # one unit per Serve replica slot
DATA = "moon_data"  # Ray Data preprocessing / embedding tasks

ALL = (TRAINER, ROLLOUT, SERVE, DATA)


def request(name: str, enabled: bool, amount: float = 1.0) -> dict[str, float]:
    """`{"resources": {name: amount}}`-style dict for ray_remote_args, or {} when disabled."""
    if name not in ALL:
        raise ValueError(f"unknown custom resource {name!r}; known: {ALL}")
    return {name: amount} if enabled else {}


def placement_limit(need: dict[str, float], nodes: list[dict]) -> int | None:
    """How many actors needing `need` (resource -> amount) the alive `nodes` (ray.nodes()) hold in all,
    counted node by node on their total resources; None when the actor asks for nothing."""
    need = {k: v for k, v in need.items() if v > 0}
    if not need:
        return None
    total = 0
    for node in nodes:
        if node.get("Alive", node.get("alive", True)):
            have = node.get("Resources", {})
            total += min(math.floor(have.get(k, 0.0) / v + 1e-9) for k, v in need.items())
    return total
