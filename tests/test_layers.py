"""The dependency rule (issue 18), checked by walking every import and attribute access in the source:
the packages below the engine never import it, and nothing outside raretarget/engine.py reaches into an
Engine's private attributes."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: folders below the engine (mapped to raretarget.<name>)
LOWER = ("ingest", "encoders", "index", "query", "prioritize")
#: names an Engine goes by in the code
ENGINE_NAMES = {"eng", "engine"}

#: known exceptions, to be removed by the store / engine split of issue 18 (the test fails when one is fixed, so
#: the list only shrinks): the parallel-ingest worker protocol reads the engine's PHI / alias / study caches;
#: the CLI shares one knowledge base between engines; review keeps its compiled PHI patterns on the engine.
KNOWN = {
    ("ingest/parallel.py", "_phi_cache"), ("ingest/parallel.py", "_known_alias"),
    ("ingest/parallel.py", "_known_studies"), ("ingest/parallel.py", "_known_phi"),
    ("raretarget/cli.py", "_kb"), ("raretarget/review.py", "_review_phi"),
    ("scripts/bench_retrieval.py", "_bench_truth"),       # an attribute the script itself attaches
}


def _sources(*folders: str):
    for folder in folders:
        for p in sorted((ROOT / folder).rglob("*.py")):
            yield p.relative_to(ROOT).as_posix(), ast.parse(p.read_text(encoding="utf-8"), str(p))


def _imports_engine(rel: str, tree: ast.AST) -> list[str]:
    pkg = ["raretarget", rel.split("/")[0]] if rel.split("/")[0] in LOWER else ["raretarget"]
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bad += [a.name for a in node.names if a.name == "raretarget.engine"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)] if node.level - 1 < len(pkg) else []
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = {a.name for a in node.names}
            if mod == "raretarget.engine" or (mod == "raretarget" and names & {"Engine", "IngestReport", "engine"}):
                bad.append(f"line {node.lineno}: from {mod} import {sorted(names)}")
    return bad


def test_lower_packages_never_import_the_engine():
    bad = {rel: b for rel, tree in _sources(*LOWER) if (b := _imports_engine(rel, tree))}
    assert not bad, bad


def test_the_check_sees_an_engine_import():
    tree = ast.parse("def f():\n    from raretarget import Engine\n    from ..engine import Engine\n")
    assert len(_imports_engine("encoders/x.py", tree)) == 2


def test_no_private_engine_attributes_outside_the_engine():
    found = set()
    for rel, tree in _sources("raretarget", *LOWER, "scripts", "benchmarks"):
        if rel == "raretarget/engine.py":
            continue
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ENGINE_NAMES
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                found.add((rel, node.attr))
    assert found - KNOWN == set(), "private Engine attributes used outside engine.py"
    assert KNOWN - found == set(), "a known exception is gone: remove it from KNOWN"
