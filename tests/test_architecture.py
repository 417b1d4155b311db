"""The house plan, checked: wings import only downward, no cycles, small modules with a stated job."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pitguard"
MAX_LINES = 400

# The wings, in the order the pipeline reads: a wing imports only wings of lower rank (and its own
# modules, without cycles). Training sits above evaluation because it scores as it goes (val
# curves, out-of-fold scores); the decision certifies thresholds on evaluated scores.
RANKS: dict[str, int] = {
    "core": 0,  # errors, logging, files, seeds, devices, statistics, progress
    "recipes": 1,  # the recipe files and their reader
    "config": 1,  # typed settings
    "runtime": 2,  # scoring a bundle where the line runs: no torch (test below)
    "data": 3,  # layouts, decoding, splits, audit, augmentation
    "models": 4,  # networks, weights, imported weights, run folders
    "evaluate": 5,  # metrics, figures, out-of-fold scores, comparisons
    "train": 6,  # the loop, epochs, loss, optimiser, budget, ranks, cross-fits, sweeps
    "decision": 6,  # certified thresholds, their review cost, label review
    "deploy": 7,  # export, predict, serve, bench
    "report": 8,
    "ros": 8,  # the line stage as a ROS 2 node: a shell over the runtime
    "studies": 8,  # the legacy two-stage method, reproduced for comparison
    "cli": 9,  # the verbs and the demo
    "__init__": 10,  # the package's `pitguard.load` shortcut into deploy
    "__main__": 10,
}
# Inference is a wing of its own: nothing that trains, calibrates or evaluates.
DEPLOY_NEVER = (
    "train",
    "decision",
    "evaluate",
    "studies",
    "report",
    "cli",
    "data.augment",
    "data.split",
    "data.audit",
    "data.prepare",
)


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" and len(rel.parts) > 1 else rel.parts
        out[".".join(parts)] = path
    return out


def _imports(path: Path) -> set[str]:
    """pitguard modules imported anywhere in the file (lazy imports inside functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "pitguard":
                found |= {alias.name for alias in node.names}
            elif node.module.startswith("pitguard."):
                base = node.module.removeprefix("pitguard.")
                # `from pitguard.pkg import module` imports that module
                subs = {f"{base}.{a.name}" for a in node.names} & set(_modules())
                found |= subs or {base}
        elif isinstance(node, ast.Import):
            found |= {
                a.name.removeprefix("pitguard.")
                for a in node.names
                if a.name.startswith("pitguard.")
            }
    return found


def _rank(module: str) -> int:
    return RANKS[module.split(".")[0]]


MODULES = _modules()
GRAPH = {
    m: {i for i in _imports(p) if i.split(".")[0] in RANKS and i != "__version__"}
    for m, p in MODULES.items()
}


def test_every_module_has_a_rank():
    assert sorted({m.split(".")[0] for m in MODULES} - set(RANKS)) == []


def test_the_package_root_holds_wings_not_modules():
    """`ls src/pitguard` reads as the pipeline: folders, and only the settings beside them."""
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "config.py"]
    wings = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert wings == sorted(k for k in RANKS if not k.startswith("__") and k != "config")


def test_tests_mirror_the_wings():
    """A wing's tests sit in the folder of the same name."""
    tests = PACKAGE.parents[1] / "tests"
    for wing in RANKS:
        if not wing.startswith("__") and wing != "config":
            assert (tests / wing).is_dir(), f"tests/{wing}/ is missing"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_only(module):
    if module == "__init__":
        return
    upward = sorted(i for i in GRAPH[module] if _rank(i) > _rank(module))
    assert upward == [], f"{module} (rank {_rank(module)}) imports higher wings: {upward}"


# Export turns a run into a bundle: it certifies an INT8 or FP16 graph's thresholds again on
# that graph's own scores. Nothing that loads a bundle imports it.
EXPORT_MAY = ("decision.certify",)


def test_deploy_imports_nothing_from_training():
    for module, imported in GRAPH.items():
        if module.startswith("deploy"):
            allowed = EXPORT_MAY if module == "deploy.export" else ()
            bad = sorted(
                i for i in imported if i.startswith(DEPLOY_NEVER) and not i.startswith(allowed)
            )
            assert bad == [], f"{module} imports training code: {bad}"


def test_no_import_cycles():
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH.get(node, ())):
            if nxt == node:
                continue
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail, node, nxt]))
            if nxt in GRAPH and not state.get(nxt):
                visit(nxt, [*trail, node])
        state[node] = 2

    for module in sorted(GRAPH):
        if not state.get(module):
            visit(module, [])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_are_small_and_state_their_job(module):
    path = MODULES[module]
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_LINES, f"{path.name}: over {MAX_LINES} lines"
    if text.strip():
        doc = ast.get_docstring(ast.parse(text))
        assert doc and doc.splitlines()[0].strip(), f"{module}: no first-line docstring"


# What the line's runtime may import: numpy, onnxruntime, Pillow, safetensors and these.
RUNTIME_MAY = ("core.errors", "core.files", "runtime")


def test_the_runtime_imports_no_training_and_no_torch():
    import subprocess
    import sys

    for module, imported in GRAPH.items():
        if module.startswith(("runtime", "ros")):  # the node is a shell over the runtime
            bad = sorted(i for i in imported if not i.startswith((*RUNTIME_MAY, "ros")))
            assert bad == [], f"{module} imports {bad}"
    code = "import sys, pitguard.runtime; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'kornia', 'optuna', 'tensorboard')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# The command line decides what reaches the terminal: library code logs (pitguard.core.log).
PRINTS_ALLOWED = ("cli",)


def test_library_code_logs_and_never_prints():
    found = []
    for module, path in MODULES.items():
        if module.startswith(PRINTS_ALLOWED):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                found.append(f"{module}:{node.lineno}")
    assert found == []
