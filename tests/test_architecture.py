"""The package's shape: imports flow one way, config keys and results paths are each named once.

These read the source (no imports of the modules checked), so they are fast and fail on the line that
breaks a rule.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lyra"
SOURCES = sorted(PACKAGE.rglob("*.py"))
RULES = sorted((ROOT / "rules").glob("*.smk")) + [ROOT / "Snakefile"]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SOURCES}


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, names, line) of every lyra import in the file, at any depth (function-level included)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "lyra"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "lyra":
            out.append((node.module, [a.name for a in node.names], node.lineno))
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the lyra modules it imports. `from pkg import mod` counts as importing the module, and
    importing a module also runs the __init__ of each package above it."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        for target, names, _ in imports(path):
            found = {f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES} or {target}
            for t in found:
                parts = t.split(".")
                for i in range(1, len(parts) + 1):
                    dep = ".".join(parts[:i])
                    if dep in MODULES and dep != mod and not mod.startswith(dep + "."):
                        graph[mod].add(dep)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_model_and_data_layers_do_not_reach_up():
    # the engine's lower layers stay usable without the campaign machinery
    graph = import_graph()
    lower = ("lyra.model", "lyra.data", "lyra.learn")
    upper = ("lyra.campaign", "lyra.report", "lyra.cli", "lyra.design", "lyra.tune")
    bad = [f"{m} imports {d}" for m in graph if m.startswith(lower) for d in graph[m] if d.startswith(upper)]
    assert not bad, "\n".join(bad)


def test_no_private_name_is_imported_from_another_module():
    bad = []
    for mod, path in MODULES.items():
        for target, names, line in imports(path):
            bad += [f"{path.relative_to(ROOT)}:{line}: {target}.{n}" for n in names if n.startswith("_")]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


# --- config keys: defined once, in lyra/schema.yaml --------------------------------------------------

SCHEMA = yaml.safe_load((PACKAGE / "schema.yaml").read_text())


def schema_keys(node=SCHEMA, prefix=""):
    for key, sub in node.get("properties", {}).items():
        yield prefix + key, sub
        if sub.get("type") == "object" and "properties" in sub:
            yield from schema_keys(sub, f"{prefix}{key}.")


def test_config_schema_is_the_packaged_one():
    assert (ROOT / "config" / "schema.yaml").resolve() == (PACKAGE / "schema.yaml").resolve()


def code_text() -> str:
    return "\n".join(p.read_text() for p in [*SOURCES, *RULES])


def test_every_schema_key_is_read_by_the_code():
    text = code_text()
    unread = [dotted for dotted, _ in schema_keys()
              if not re.search(rf"""(\.{re.escape(dotted.split('.')[-1])}\b|["']{re.escape(dotted.split('.')[-1])}["'])""", text)]
    assert not unread, f"schema keys nothing reads: {unread}"


def test_every_key_the_code_reads_from_a_config_section_is_in_the_schema():
    sections = {k: sub for k, sub in SCHEMA["properties"].items() if sub.get("type") == "object"}
    pattern = re.compile(r"""\[["'](%s)["']\](?:\.get\(|\[)["'](\w+)["']""" % "|".join(sections))
    bad = []
    for path in [*SOURCES, *RULES]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for section, key in pattern.findall(line):
                if key not in sections[section].get("properties", {}):
                    bad.append(f"{path.relative_to(ROOT)}:{n}: {section}.{key}")
    assert not bad, "the code reads keys the schema does not define:\n" + "\n".join(bad)


def test_every_schema_key_has_a_description():
    missing = [k for k, sub in schema_keys() if not sub.get("description")]
    assert not missing, f"schema keys without a description: {missing}"


def test_typed_views_match_their_schema_sections():
    # importing them runs schema_fields, which refuses a field the schema lacks and a key without a field
    from lyra.schema import section_schema

    views = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for dec in node.decorator_list:
                    if isinstance(dec, ast.Call) and ast.unparse(dec.func) == "schema_fields":
                        views.append((module_name(path), node.name, ast.literal_eval(dec.args[0])))
    assert len(views) >= 5, views
    import importlib

    for mod, name, section in views:
        cls = getattr(importlib.import_module(mod), name)
        assert cls.schema_section == section
        section_schema(section)


# --- results paths: named once, in lyra/campaign/layout.py -------------------------------------------

RESULT_FILES = ("dataset.parquet", "metrics.json", "best.json", "trials.tsv", "journal.log", "scores.parquet",
                "ranking.csv", "ranking.fasta", "plate.csv", "ranking_dna.fasta", "manifest.json", "report.md",
                "learning_curves.png", "test_predictions.png", "tune_history.png", "top_n.md", "epistasis.tsv",
                "ridge.npz")


@pytest.mark.parametrize("path", [*SOURCES, *RULES], ids=lambda p: str(p.relative_to(ROOT)))
def test_results_files_are_named_only_in_the_layout(path):
    if path == PACKAGE / "campaign" / "layout.py":
        return
    bad = []
    for node in ast.walk(ast.parse(path.read_text())) if path.suffix == ".py" else []:
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and not _is_docstring(node, path):
            bad += [f"line {node.lineno}: {node.value!r}" for f in RESULT_FILES if _names_file(node.value, f)]
    if path.suffix != ".py":
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            bad += [f"line {n}: {f}" for f in RESULT_FILES if re.search(rf"""["'][^"']*\b{re.escape(f)}["']""", code)]
    assert not bad, f"{path.relative_to(ROOT)} names results files itself (ask lyra.campaign.layout):\n" + "\n".join(bad)


def _names_file(value: str, name: str) -> bool:
    # a path literal, not prose that mentions the file (log messages, help texts)
    return value == name or value.endswith("/" + name)


_DOCSTRINGS: dict[Path, set[int]] = {}


def _is_docstring(node: ast.Constant, path: Path) -> bool:
    if path not in _DOCSTRINGS:
        ids = set()
        for n in ast.walk(ast.parse(path.read_text())):
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and n.body:
                first = n.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                    ids.add((first.value.lineno, first.value.col_offset))
        _DOCSTRINGS[path] = ids
    return (node.lineno, node.col_offset) in _DOCSTRINGS[path]
