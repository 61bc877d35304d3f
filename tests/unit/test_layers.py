"""The import graph of the package: no cycles, and every import goes along the layer map written in
docs/design.md ("Layers"). Imports inside functions count as much as those at the top."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "egrpo"

# tier -> the tiers it may import (itself included); docs/design.md states the same table
ALLOWED = {
    "errors": {"errors"},
    "runtime": {"runtime", "errors"},
    "sde": {"sde"},                                   # the math: torch only
    "core": {"core", "sde", "runtime", "errors"},
    "config": {"config", "core", "runtime", "errors"},   # torch-free tables of core only (checked below)
    "train": {"train", "core", "sde", "runtime", "config", "errors"},
    "analysis": {"analysis", "core", "runtime", "config", "errors"},
    "stages": {"stages", "train", "analysis", "core", "sde", "runtime", "config", "errors"},
    "cli": {"cli", "stages", "runtime", "config", "errors"},
}
# what config and analysis may read of the core: the torch-free registries of rewards and algorithms, and the
# tiny world's caption parser (config reads it inside a function, for the preflight of a tiny-world run)
TORCH_FREE = {"egrpo.rewards", "egrpo.algorithms.facts", "egrpo.tinyworld"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def tier(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("cli", "__main__"):
        return "cli"
    if parts[1] in ("errors", "runtime", "sde", "config", "train", "analysis", "stages"):
        return parts[1]
    return "core"


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}

    def resolve(name):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "egrpo":
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in modules else resolve(node.module))
            elif isinstance(node, ast.Import):
                targets |= {resolve(a.name) for a in node.names if a.name.split(".")[0] == "egrpo"}
        graph[name] = targets - {name, ""}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for source, targets in graph.items():
        for target in targets:
            a, b = tier(source), tier(target)
            if b not in ALLOWED[a]:
                out.append(f"{source} ({a}) imports {target} ({b})")
            elif a in ("config", "analysis") and b == "core" and target not in TORCH_FREE:
                out.append(f"{source} imports {target}: {a} reads only the torch-free tables {sorted(TORCH_FREE)}")
            elif a == b == "stages" and source != "egrpo.stages" and target != "egrpo.stages":
                out.append(f"{source} imports another stage, {target}: share it through analysis/ or the core")
    return out


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40
    assert not cycles(graph), "\n".join(" -> ".join(c) for c in cycles(graph))


def test_every_import_follows_the_layer_map():
    assert not violations(import_graph()), "\n".join(violations(import_graph()))


def test_the_checks_see_a_cycle_and_a_layer_violation():
    graph = {"egrpo.rewards.a": {"egrpo.rewards.b"}, "egrpo.rewards.b": {"egrpo.rewards.a"},
             "egrpo.sde": {"egrpo.models"}, "egrpo.train.x": {"egrpo.stages.evaluate"},
             "egrpo.stages.report": {"egrpo.stages.evaluate"}, "egrpo.analysis.plots": {"egrpo.models"}}
    assert cycles(graph) == [["egrpo.rewards.a", "egrpo.rewards.b", "egrpo.rewards.a"]]
    assert sorted(violations(graph)) == sorted([
        "egrpo.sde (sde) imports egrpo.models (core)",
        "egrpo.train.x (train) imports egrpo.stages.evaluate (stages)",
        "egrpo.analysis.plots imports egrpo.models: analysis reads only the torch-free tables "
        "['egrpo.algorithms.facts', 'egrpo.rewards', 'egrpo.tinyworld']",
        "egrpo.stages.report imports another stage, egrpo.stages.evaluate: share it through analysis/ or the core"])
