"""The package layout the README promises: one-way imports between layers, no private names imported from
another module, and recipes/ holding entry points only."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "alignlab"

# A module may import from a lower layer or from its own package, never from a higher or equal other layer.
LAYERS = {
    "config": 0,
    "ops": 0,
    "losses": 1,
    "data": 1,
    "models": 1,
    "task": 1,
    "precompute": 2,
    "decoding": 2,
    "rewards": 2,
    "judge": 2,
    "training": 2,
    "rollout": 3,
    "choices": 3,
    "eval": 4,
    "study": 4.5,
    "recipes": 5,
    "cli": 6,
}
ENTRY_POINTS = {
    "__init__",
    "train",
    "demo",
    "generate",
    "heatmap",
    "diagnose",
    "score",
    "export",
    "compare",
    "rm",
    "rl",
    "study",
    "label",
    "rlaif",
}


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("alignlab"):
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("alignlab"):
                    yield a.name, []


def _package(module: str, names: list[str]) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else names[0]


def test_imports_go_one_way():
    bad = []
    for path in ROOT.rglob("*.py"):
        src = path.relative_to(ROOT).with_suffix("").parts[0]
        for module, names in _imports(path):
            for dst in {_package(module, [n]) for n in names} if module == "alignlab" else {_package(module, names)}:
                if dst != src and LAYERS[dst] >= LAYERS[src]:
                    bad.append(
                        f"{path.relative_to(ROOT.parent)}: {src} (layer {LAYERS[src]}) imports {module} "
                        f"(layer {LAYERS[dst]})"
                    )
    assert not bad, "\n".join(bad)


def test_every_package_has_a_layer():
    names = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    names |= {p.stem for p in ROOT.glob("*.py") if p.stem not in ("__init__", "__main__")}
    assert names <= set(LAYERS), sorted(names - set(LAYERS))


def test_no_private_names_from_other_modules():
    bad = []
    for path in ROOT.rglob("*.py"):
        here = ".".join(("alignlab",) + path.relative_to(ROOT).with_suffix("").parts)
        for module, names in _imports(path):
            if module != here and any(n.startswith("_") and not n.startswith("__") for n in names):
                bad.append(f"{path.relative_to(ROOT.parent)}: from {module} import {names}")
    assert not bad, "\n".join(bad)


def test_recipes_hold_entry_points_only():
    found = {p.stem for p in (ROOT / "recipes").glob("*.py")}
    assert found <= ENTRY_POINTS, sorted(found - ENTRY_POINTS)
    for stem in found - {"__init__"}:
        tree = ast.parse((ROOT / "recipes" / f"{stem}.py").read_text(encoding="utf-8"))
        top = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert "main" in top, f"recipes/{stem}.py has no main(cfg)"
