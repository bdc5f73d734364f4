"""The floors of the house: which part of moon_ray may import which. Lowest first; a module imports
only from its own floor or below. This table is the one place the floors are written down.

    python -m moon_ray.floors            # lists every upward import; exit 1 if there is one

Every import counts, also those inside functions (that is how an upward import hides), and so does a
string naming a module ("moon_ray.eval.baselines", "moon_ray.cli:main") that code hands to importlib.
`tests/test_floors.py` runs the check in the test suite, and `.ci/run` runs it before pytest.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "moon_ray"
# floor -> the modules or packages on it (dotted, below PACKAGE); a package covers its submodules
FLOORS: dict[int, tuple[str, ...]] = {
    1: ("", "config", "configlib", "floors"),  # "" is moon_ray/__init__.py
    2: ("infrastructure",),  # runtime, resources, timing, index
    3: ("catalog", "models", "losses", "rewards"),
    4: ("rollout", "weight_sync"),
    5: ("train", "eval", "creative"),
    6: ("serve",),
    7: ("jobs", "cli", "demo"),
}
FLOOR_NAMES = {1: "config", 2: "infrastructure", 3: "catalog/models/losses", 4: "rollout/weight_sync",
               5: "train/eval/creative", 6: "serve", 7: "jobs/cli/demo"}
MODULE_STRING = re.compile(rf"^{PACKAGE}(\.\w+)+(:\w+)?$")


@dataclass(frozen=True)
class Violation:
    file: str
    line: int
    importer: str
    imported: str
    importer_floor: int
    imported_floor: int

    def __str__(self) -> str:
        return (f"{self.file}:{self.line}: {self.importer} (floor {self.importer_floor}, "
                f"{FLOOR_NAMES[self.importer_floor]}) imports {self.imported} (floor {self.imported_floor}, "
                f"{FLOOR_NAMES[self.imported_floor]})")


def floor_of(module: str) -> int | None:
    """The floor of a dotted module name under moon_ray (None: not part of moon_ray)."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    rest = module[len(PACKAGE) + 1 :]
    best, best_len = None, -1
    for floor, parts in FLOORS.items():
        for part in parts:
            if part == "" and rest == "" or part and (rest == part or rest.startswith(part + ".")):
                if len(part) > best_len:
                    best, best_len = floor, len(part)
    if best is None:
        raise KeyError(f"{module} is on no floor: add it to moon_ray/floors.py FLOORS")
    return best


def module_name(path: Path, root: Path) -> str:
    """moon_ray/train/joint.py -> moon_ray.train.joint; a package's __init__ -> the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(tree: ast.AST, module: str, is_package: bool, root: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import anywhere in the tree, and for module-name strings."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, is_package)
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names if _is_submodule(root, base, a.name)]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.match(node.value):
            name = node.value.split(":")[0]
            base, _, last = name.rpartition(".")
            if _is_submodule(root, base, last):  # a real module, not a key that looks like one
                out.append((node.lineno, name))
    return out


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_submodule(root: Path, base: str, name: str) -> bool:
    """`from moon_ray import demo`: the imported name may itself be a module on another floor."""
    folder = root / base.replace(".", "/")
    return base.startswith(PACKAGE) and ((folder / name).is_dir() or (folder / f"{name}.py").is_file())


def check(root: Path | None = None) -> list[Violation]:
    """Every upward import in the package under `root` (the directory holding moon_ray/)."""
    root = Path(root) if root is not None else Path(__file__).resolve().parent.parent
    found = []
    for path in sorted((root / PACKAGE).rglob("*.py")):
        module = module_name(path, root)
        mine = floor_of(module)
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, imported in imports_of(tree, module, path.name == "__init__.py", root):
            theirs = floor_of(imported)
            if theirs is not None and theirs > mine:
                found.append(Violation(str(path.relative_to(root)), line, module, imported, mine, theirs))
    return found


def main(argv: list[str] | None = None) -> int:
    root = Path(argv[0]) if argv else None
    violations = check(root)
    for v in violations:
        print(v)
    print(f"floors: {len(violations)} upward import(s)" if violations else "floors: every import goes down or level")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
