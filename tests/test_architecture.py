"""The package's import graph has no circles: data flows one way (task → zoo → forget set → method →
metrics → report), and a pipeline (a run, a study) imports the stages, never the reverse. Imports inside
functions count too: a deferred import hides a circle from Python, not from a reader."""
from __future__ import annotations

import ast
from pathlib import Path

import unlearnkit

ROOT = Path(unlearnkit.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every package module `name` imports, at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor) + (f".{base}" if base else "")
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    # a package's __init__ re-exporting its own modules is not a circle of the design
    graph = {a: {b for b in deps if not (a == b.rpartition(".")[0] and modules[a].name == "__init__.py")}
             for a, deps in graph.items()}
    assert _circles(graph) == []
    assert graph["unlearnkit.lm_corrective"] & {"unlearnkit.relearn"}  # the check reads what it should


def test_circle_finder_finds_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_language_model_family_holds_no_pipeline():
    """`lm/` is the model family (tokenizer, model, scoring, generation, adapters, inference-time
    steering); the pipelines that run it sit beside the classifier's (`lm_experiment`, `lm_corrective`…)."""
    modules = _modules()
    pipelines = {"unlearnkit.runs", "unlearnkit.cells", "unlearnkit.report", "unlearnkit.study"}
    for name, path in modules.items():
        if name.startswith("unlearnkit.lm."):
            assert not _imports(name, path, set(modules)) & pipelines, name
