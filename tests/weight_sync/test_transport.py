"""The weight-transport registry: one `send` shape, state in the transport object, clear refusals."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from moon_ray.weight_sync import transport as T
from moon_ray.weight_sync.collective import CollectiveTransport
from moon_ray.weight_sync.object_store import ObjectStoreTransport


def test_registry_names_and_modes():
    assert isinstance(T.create_transport("object_store", mode="adapter"), ObjectStoreTransport)
    gloo = T.create_transport("gloo")
    assert isinstance(gloo, CollectiveTransport) and gloo.backend == "gloo" and gloo.mode == "merged"
    with pytest.raises(ValueError, match="unknown weight transport 'carrier-pigeon'"):
        T.create_transport("carrier-pigeon")
    with pytest.raises(ValueError, match="merged weights"):
        T.create_transport("nccl", mode="adapter")
    with pytest.raises(ValueError, match="mode must be one of"):
        T.create_transport("object_store", mode="diff")


def test_collective_groups_are_state_of_each_transport():
    """Two transports (two trainers, or a trainer restarted) do not share a group name or count."""
    a, b = CollectiveTransport(backend="gloo"), CollectiveTransport(backend="gloo")
    assert a.group is None and b.group is None and a.groups_made == b.groups_made == 0


def test_no_module_level_mutable_state_in_weight_sync():
    """Module-level names bound to dicts/lists/sets (other than the registry) are what `_GROUP` was."""
    root = Path(T.__file__).parent
    allowed = {"_REGISTRY", "_BUILTIN"}
    for path in root.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict | ast.List | ast.Set | ast.Call):
                names = {t.id for t in node.targets if isinstance(t, ast.Name)}
                assert names <= allowed, f"{path.name}: module-level mutable state {names}"
            if isinstance(node, ast.AnnAssign) and isinstance(node.value, ast.Dict | ast.List | ast.Set):
                assert node.target.id in allowed, f"{path.name}: module-level mutable state {node.target.id}"
