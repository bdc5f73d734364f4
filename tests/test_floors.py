"""The floors (moon_ray/floors.py): the package has no upward import, and the checker finds one."""

from __future__ import annotations

from pathlib import Path

import pytest

from moon_ray import floors


def test_the_package_imports_only_down_or_level():
    violations = floors.check()
    assert not violations, "\n".join(str(v) for v in violations)


def make_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in {"moon_ray/__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checker_finds_upward_imports_however_written(tmp_path):
    root = make_tree(tmp_path, {
        "moon_ray/config.py": "",
        "moon_ray/models/__init__.py": "",
        "moon_ray/models/encoder.py": (
            "import importlib\n"
            "from moon_ray.config import x\n"                 # down: fine
            "from moon_ray.models import other\n"             # level: fine
            "def load():\n"
            "    from moon_ray.eval.baselines import y\n"     # up, hidden in a function (line 5)
            "    importlib.import_module('moon_ray.eval.baselines')\n"  # up, by name (line 6)
        ),
        "moon_ray/models/other.py": "from ..train import task\n",  # up, relative (line 1)
        "moon_ray/models/keys.py": "KEY = 'moon_ray.schema_version'\n",  # looks like a module, is not
        "moon_ray/eval/__init__.py": "",
        "moon_ray/eval/baselines.py": "from moon_ray.models.encoder import load\n",  # down: fine
        "moon_ray/train/__init__.py": "",
        "moon_ray/train/task.py": "",
        "moon_ray/demo.py": "from moon_ray import train, serve\n",  # top floor: anything goes
    })
    found = {(v.file, v.line, v.imported) for v in floors.check(root)}
    assert found == {
        ("moon_ray/models/encoder.py", 5, "moon_ray.eval.baselines"),
        ("moon_ray/models/encoder.py", 6, "moon_ray.eval.baselines"),
        ("moon_ray/models/other.py", 1, "moon_ray.train"),
        ("moon_ray/models/other.py", 1, "moon_ray.train.task"),
    }
    assert floors.main([str(root)]) == 1


def test_a_module_on_no_floor_is_an_error():
    assert floors.floor_of("torch.nn") is None
    assert floors.floor_of("moon_ray.infrastructure.timing") == 2
    with pytest.raises(KeyError, match="on no floor"):
        floors.floor_of("moon_ray.attic")
