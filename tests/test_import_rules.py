"""The import rules of docs/ARCHITECTURE.md ("What each module may import"), checked.

Part 1 starts entry points and imports modules in fresh interpreters (one subprocess each)
and asserts that TensorFlow and seqio (and, for `evaluate`, JAX) are never even looked for:
an import hook records every attempt, so the check holds whether or not TensorFlow is
installed. Part 2 reads the source files with `ast` (no imports) and checks the layering
table. Both run against this checkout's `mathft_jax` (PYTHONPATH), not an installed copy.
"""
from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = REPO / "mathft_jax"

# ------------------------------------------------------------ part 1: in a fresh process

# Runs one entry point's `--help` (or imports one module), with a meta-path hook that
# records every attempt to import a watched package, then prints one JSON line.
_PROBE = r"""
import json, runpy, sys
WATCHED = set(sys.argv[3].split(","))
attempts = []
class _Spy:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in WATCHED:
            attempts.append(name)
        return None
sys.meta_path.insert(0, _Spy())
mode, name = sys.argv[1], sys.argv[2]
if mode in ("help", "run"):  # run: a real model-only run, with a gin file
    sys.argv = [name, "--help" if mode == "help" else "--gin_file=gin_configs/models/tiny.gin"]
    try:
        runpy.run_module(name, run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
else:
    __import__(name)
import mathft_jax
print("\n" + json.dumps({"attempts": sorted(set(attempts)),
                         "loaded": sorted(m for m in WATCHED if m in sys.modules),
                         "package": mathft_jax.__file__}))
"""

TF = ("tensorflow", "seqio")
JAX = ("jax", "jaxlib", "flax", "optax", "orbax")

# (mode, module, packages it must not import, a string its --help prints)
CASES = [
    ("help", "mathft_jax.evaluate", TF + JAX, "--candidates"),
    ("help", "mathft_jax.models", TF, "--seq_len"),
    ("run", "mathft_jax.models", TF, '"params"'),
    ("help", "mathft_jax.convert.export_hf", TF, "--checkpoint"),
    ("import", "mathft_jax.convert.export_hf", TF, None),
    ("import", "mathft_jax.train", TF, None),
    ("import", "mathft_jax.sampling.decoding", TF, None),
    ("import", "mathft_jax.models.partitioning", TF, None),
    ("import", "mathft_jax.sampling.batching", TF + JAX, None),  # host-side batching: NumPy only
]


def _probe(mode: str, module: str, watched) -> tuple[dict, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-c", _PROBE, mode, module, ",".join(watched)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{module}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    last = proc.stdout.strip().splitlines()[-1]
    return json.loads(last), proc.stdout


@pytest.mark.parametrize("mode,module,forbidden,help_text", CASES,
                         ids=[f"{m}:{n}" for m, n, _, _ in CASES])
def test_no_tensorflow_at_start(mode, module, forbidden, help_text):
    result, stdout = _probe(mode, module, forbidden)
    assert pathlib.Path(result["package"]).resolve().parent == PACKAGE, (
        f"probed {result['package']}, not this checkout's mathft_jax")
    if help_text is not None:  # the entry point really ran and printed its help
        assert help_text in stdout, f"{module} --help printed no {help_text}:\n{stdout[-2000:]}"
    tried = sorted({n.split(".")[0] for n in result["attempts"] + result["loaded"]})
    assert not tried, (f"{mode} {module} imports {tried} (docs/ARCHITECTURE.md: "
                       "import rules); find the chain with python -X importtime")


# ------------------------------------------------------------ part 2: the layering table


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


SOURCES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: pathlib.Path) -> list[tuple[str, bool, int]]:
    """(imported module, at module level?, line) for every import in the file. Imports
    inside a function, a lambda or the `if __name__ == "__main__":` guard are not at
    module level. `from mathft_jax import storage` names `mathft_jax.core.storage`."""
    found = []

    def visit(node, top):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((a.name, top, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and not child.level:
                for a in child.names:
                    sub = f"{child.module}.{a.name}"
                    found.append((sub if sub in SOURCES else child.module, top, child.lineno))
            nested = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) or (
                isinstance(child, ast.If) and "__main__" in ast.unparse(child.test))
            visit(child, top and not nested)

    visit(ast.parse(path.read_text(), str(path)), True)
    return found


def _in(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


# Not entry points, but on the commands' layer: what several commands share (the training
# harness checkpoints, so it sits above convert/).
SHARED_BY_COMMANDS = ("mathft_jax.training.harness",)
# The layers of docs/ARCHITECTURE.md, from the bottom: a folder each, and the commands on top.
# A module may import (anywhere: at module level or inside a function) only modules of its
# own folder or of a lower layer, so the import graph has no circle and nothing runs back up.
LAYERS = {
    "core": ("mathft_jax.core",),
    "grading": ("mathft_jax.grading",),
    "results": ("mathft_jax.results",),
    "data": ("mathft_jax.data",),
    "models": ("mathft_jax.models",),
    "training": ("mathft_jax.training",),
    "sampling": ("mathft_jax.sampling",),
    "convert": ("mathft_jax.convert",),
    "scoring": ("mathft_jax.scoring",),
    "rl": ("mathft_jax.rl",),
    "commands": ("mathft_jax.train", "mathft_jax.infer", "mathft_jax.evaluate",
                 "mathft_jax.evaluate_model", "mathft_jax.pipeline", "mathft_jax.models.__main__",
                 "mathft_jax.convert.import_hf", "mathft_jax.convert.export_hf",
                 "mathft_jax.scoring.reference", "mathft_jax.rl.loop", "mathft_jax.rl.__main__",
                 *SHARED_BY_COMMANDS),
    # Above the commands: the planner reads every stage's settings as the pipeline resolves
    # them, and compiles the programs the commands run.
    "planning": ("mathft_jax.planning", "mathft_jax.plan"),
}
RANK = {"core": 0, "grading": 1, "results": 2, "data": 3, "models": 3, "training": 4,
        "sampling": 4, "convert": 5, "scoring": 6, "rl": 7, "commands": 8, "planning": 9}
# The longest chain of imports (a module importing one that imports another ...), counted in
# modules; it was 12 before the layer folders.
MAX_IMPORT_LEVELS = 11
# data/ modules that bring seqio and TensorFlow with them.
TF_DATA = ("mathft_jax.data.vocab", "mathft_jax.data.tasks", "mathft_jax.data.dataset")
HEAVY_ML = ("jax", "jaxlib", "flax", "optax", "orbax", "seqio", "tensorflow", "torch",
            "transformers")


def _layer(name: str) -> str:
    best = max((p for ps in LAYERS.values() for p in ps if _in(name, (p,))), key=len,
               default=None)
    assert best is not None, f"{name}: in no layer of LAYERS (add it, and to ARCHITECTURE.md)"
    return next(layer for layer, ps in LAYERS.items() if best in ps)


def _violations(rule) -> list[str]:
    out = []
    for name, path in SOURCES.items():
        if name == "mathft_jax":  # the package's __init__: only the old-path alias (core.moved)
            continue
        for target, top, line in _imports(path):
            why = rule(name, target, top)
            if why:
                out.append(f"{path.relative_to(REPO)}:{line}: {name} imports {target} ({why})")
    return out


def test_every_module_has_a_layer():
    for name in SOURCES:
        if name not in ("mathft_jax",):
            _layer(name)


def test_imports_follow_the_layers():
    """Anywhere in a module, inside functions too: its own folder or a lower layer."""
    def rule(name, target, top):
        if name == "mathft_jax" or not _in(target, ("mathft_jax",)) or target == "mathft_jax":
            return None
        mine, theirs = _layer(name), _layer(target)
        if RANK[theirs] > RANK[mine] or (RANK[theirs] == RANK[mine] and mine != theirs):
            return f"layer {mine} may not import layer {theirs}: it runs back up"
        return None
    found = _violations(rule)
    assert not found, "\n".join(found)


def _graph() -> dict:
    return {name: {t for t, _, _ in _imports(path) if t in SOURCES and t not in (name, "mathft_jax")}
            for name, path in SOURCES.items()}


def test_no_import_circle():
    graph, state, circles = _graph(), {}, []

    def visit(name, stack):
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                circles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, "\n".join(circles)


def test_import_levels():
    graph, depth = _graph(), {}

    def levels(name):
        if name not in depth:
            depth[name] = 0  # (a circle is test_no_import_circle's to report)
            depth[name] = 1 + max((levels(t) for t in graph[name]), default=0)
        return depth[name]

    below = [name for name in SOURCES if name == "mathft_jax" or _layer(name) != "planning"]
    deepest = max(below, key=levels)
    assert levels(deepest) <= MAX_IMPORT_LEVELS, f"{deepest}: {levels(deepest)} levels"
    # The planner stands on the pipeline (the deepest command) with at most 3 levels of its own
    planning = max((n for n in SOURCES if n != "mathft_jax" and _layer(n) == "planning"),
                   key=levels)
    assert levels(planning) <= levels("mathft_jax.pipeline") + 3, f"{planning}: {levels(planning)}"


def test_model_side_never_imports_data_or_tensorflow():
    """models/, partitioning, trainer, decoding and the rest of the model layer: not even
    inside a function (they run on accelerator images without seqio or TensorFlow)."""
    def rule(name, target, top):
        if _layer(name) in ("models", "training", "sampling", "grading") and _in(
                target, ("mathft_jax.data", "seqio", "tensorflow", "torch", "transformers")):
            return "the model and grading layers never import data, seqio, TF or torch"
        return None
    found = _violations(rule)
    assert not found, "\n".join(found)


def test_tensorflow_only_inside_data_at_module_level():
    def rule(name, target, top):
        if top and not _in(name, ("mathft_jax.data",)) and _in(
                target, ("seqio", "tensorflow") + TF_DATA):
            return "outside mathft_jax/data, seqio/TensorFlow only inside a function"
        return None
    found = _violations(rule)
    assert not found, "\n".join(found)


def test_no_torch_or_transformers_in_the_package():
    def rule(name, target, top):
        if _in(target, ("torch", "transformers")):
            return "torch/transformers are for tests and bench/ only"
        return None
    found = _violations(rule)
    assert not found, "\n".join(found)


def test_results_and_grading_need_no_jax():
    """candidates, voting, report, evaluate and grading/ start in a second and run in
    spawned pool workers: no JAX, Flax, Optax, Orbax, seqio or TF at module level."""
    def rule(name, target, top):
        if top and (_layer(name) in ("results", "grading") or name == "mathft_jax.evaluate") \
                and _in(target, HEAVY_ML):
            return "results/grading layers import no ML framework at module level"
        return None
    found = _violations(rule)
    assert not found, "\n".join(found)


def test_only_the_pipeline_imports_entry_points():
    """and evaluate_model (infer and evaluate on each benchmark), and the planning layer,
    which plans the pipeline's stages from its settings."""
    def rule(name, target, top):
        if name in ("mathft_jax.pipeline", "mathft_jax.evaluate_model") \
                or target in (name, *SHARED_BY_COMMANDS) or _layer(name) == "planning":
            return None
        if _in(target, ("mathft_jax",)) and target != "mathft_jax" and _layer(target) == "commands":
            return ("entry points are imported only by mathft_jax.pipeline, "
                    "mathft_jax.evaluate_model and the planner")
        return None
    found = _violations(rule)
    assert not found, "\n".join(found)


def test_optional_packages_only_inside_functions():
    """tokenizers and safetensors (HF files), matplotlib (report plots) and tensorboardX
    (metrics) are imported where they are used, so a module works without them until then."""
    def rule(name, target, top):
        if top and _in(target, ("tokenizers", "safetensors", "matplotlib", "tensorboardX")):
            return "optional packages are imported inside the function that needs them"
        return None
    found = _violations(rule)
    assert not found, "\n".join(found)
