"""The dependency rule (issue 18), checked by walking every import (module level and inside functions) and every
attribute access in the source.

Layers, lowest first; a module imports only modules of its own layer or of layers below:

====  ===========================================================================================
0     ``raretarget.vocab``, ``raretarget.config``, ``raretarget.machine``, ``raretarget.arrays``
1     ``raretarget.store`` (schema, table, safe_sql, writer, pseudo, artifacts, io)
2     ``raretarget.ingest`` (readers, the ingest pipeline handing rows to the store writer)
3     ``raretarget.index``, ``raretarget.synth``
4     ``raretarget.encoders`` (model library + store training/embedding, :mod:`raretarget.encoders.pipeline`)
5     ``raretarget.query`` (QuerySpec, search, filters)
6     ``raretarget.prioritize``
7     ``raretarget.audit``, ``raretarget.review``, ``raretarget.distributed``, ``raretarget.context``
8     ``raretarget.engine`` (the facade; ``from raretarget import Engine``)
9     ``raretarget.apps`` (cli, nightly, report, outcome, serve, drift)
====  ===========================================================================================

The one sanctioned upward edge: ``raretarget/engine.py`` hands itself to an app for ``update`` / ``report`` /
``predict_outcome`` (lazy imports of ``raretarget.apps``); apps use only the Engine's public methods. Old module
names kept for a release (``raretarget.schema`` → ``raretarget.store.schema`` ...) count as the module they alias.

Also: nothing outside raretarget/engine.py reaches into an Engine's private attributes.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: top-level folders mapped into the namespace (pyproject [tool.setuptools.package-dir])
MAPPED = {"ingest": "raretarget.ingest", "encoders": "raretarget.encoders", "index": "raretarget.index",
          "query": "raretarget.query", "prioritize": "raretarget.prioritize", "conf": "raretarget.conf",
          "raretarget": "raretarget"}
#: folders below the engine
LOWER = ("ingest", "encoders", "index", "query", "prioritize")
LAYERS = {
    "raretarget.vocab": 0, "raretarget.config": 0, "raretarget.machine": 0, "raretarget.conf": 0,
    "raretarget.arrays": 0,
    "raretarget.store": 1,
    "raretarget.ingest": 2,
    "raretarget.index": 3, "raretarget.synth": 3,
    "raretarget.encoders": 4,
    "raretarget.query": 5,
    "raretarget.prioritize": 6,
    "raretarget.audit": 7, "raretarget.review": 7, "raretarget.distributed": 7, "raretarget.context": 7,
    "raretarget.engine": 8,
    "raretarget.apps": 9,
}
#: old names (one-line re-exports for a release) → the module they are
ALIASES = {"raretarget.schema": "raretarget.store.schema", "raretarget.pseudo": "raretarget.store.pseudo",
           "raretarget.safe_sql": "raretarget.store.safe_sql", "raretarget.cohort": "raretarget.synth.cohort",
           "raretarget.nightly": "raretarget.apps.nightly", "raretarget.outcome": "raretarget.apps.outcome",
           "raretarget.report": "raretarget.apps.report", "raretarget.cli": "raretarget.apps.cli",
           "raretarget.serve": "raretarget.apps.serve", "raretarget.drift": "raretarget.apps.drift",
           "raretarget.prioritize.phenopacket": "raretarget.query.phenopacket",
           "raretarget.nightly_delta": "raretarget.apps.nightly_delta",
           "raretarget.prioritize.cohort": "raretarget.prioritize.enrichment"}
#: names an Engine goes by in the code
ENGINE_NAMES = {"eng", "engine"}

#: known exceptions to the layer order, (file, imported module): the list only shrinks (the test fails when one
#: is fixed).
KNOWN_UPWARD: set[tuple[str, str]] = set()
#: known private-attribute exceptions: an attribute the script itself attaches to its engine
KNOWN = {("scripts/bench_retrieval.py", "_bench_truth")}


def _module_of(rel: str) -> str:
    parts = rel[:-3].split("/")
    parts[0] = MAPPED[parts[0]]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources(*folders: str):
    for folder in folders:
        for p in sorted((ROOT / folder).rglob("*.py")):
            yield p.relative_to(ROOT).as_posix(), ast.parse(p.read_text(encoding="utf-8"), str(p))


def _imports(rel: str, tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, relative imports resolved, ``from pkg import sub`` as
    ``pkg.sub`` (and ``from raretarget import Engine`` as the engine)."""
    mod = _module_of(rel)
    pkg = mod.split(".") if rel.endswith("__init__.py") else mod.split(".")[:-1]
    out = []
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
                   for n in ast.walk(node)}            # imports for annotations only: no runtime edge
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)]
                m = ".".join(base + ([node.module] if node.module else []))
            else:
                m = node.module or ""
            for a in node.names:
                if m == "raretarget" and a.name in ("Engine", "IngestReport"):
                    out.append((node.lineno, "raretarget.engine"))
                else:
                    out.append((node.lineno, f"{m}.{a.name}"))
    return out


def _layer(module: str) -> int | None:
    for old, new in ALIASES.items():
        if module == old or module.startswith(old + "."):
            module = new + module[len(old):]
            break
    best = None
    for prefix, rank in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, rank)
    return None if best is None else best[1]


def _violations() -> set[tuple[str, str]]:
    bad = set()
    for rel, tree in _sources(*MAPPED):
        mod = _module_of(rel)
        if mod in ALIASES or mod == "raretarget" or mod == "raretarget.__main__":
            continue
        own = _layer(mod)
        assert own is not None, f"{rel}: module {mod} has no layer: add it to LAYERS (and the docstring)"
        for _line, imported in _imports(rel, tree):
            if not imported.startswith("raretarget"):
                continue
            theirs = _layer(imported)
            if theirs is None or theirs <= own:
                continue
            if rel == "raretarget/engine.py" and imported.startswith("raretarget.apps"):
                continue                    # the facade hands itself to an app (module doc)
            top = next(p for p in LAYERS if imported == p or imported.startswith(p + "."))
            bad.add((rel, top))
    return bad


def test_each_layer_imports_only_layers_below():
    bad = _violations()
    assert bad - KNOWN_UPWARD == set(), "imports of a higher layer"
    assert KNOWN_UPWARD - bad == set(), "a known exception is gone: remove it from KNOWN_UPWARD"


def test_nothing_below_the_engine_imports_it_or_the_apps():
    bad = []
    for rel, tree in _sources(*MAPPED):
        mod = _module_of(rel)
        if mod in ALIASES or mod in ("raretarget", "raretarget.__main__", "raretarget.engine") \
                or mod.startswith("raretarget.apps"):
            continue
        for line, imported in _imports(rel, tree):
            if _layer(imported) in (8, 9):
                bad.append(f"{rel}:{line}: {imported}")
    assert not bad, bad


def test_the_check_sees_an_engine_import():
    tree = ast.parse("def f():\n    from raretarget import Engine\n    from ..engine import Engine\n"
                     "    from raretarget.nightly import update\n")
    got = [m for _, m in _imports("encoders/x.py", tree)]
    assert got == ["raretarget.engine", "raretarget.engine.Engine", "raretarget.nightly.update"]
    assert [_layer(m) for m in got] == [8, 8, 9]


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


def test_every_package_folder_is_installed():
    """Every folder with an ``__init__.py`` under a mapped top-level folder is in pyproject's ``packages`` list
    (a regular, non-editable install would leave it out otherwise), and the package-dir map is complete."""
    text = (ROOT / "pyproject.toml").read_text()
    listed = set(re.findall(r'^\s*"(raretarget[\w.]*)",', text.split("packages = [", 1)[1].split("]", 1)[0], re.M))
    want = set()
    for folder, pkg in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            sub = init.parent.relative_to(ROOT / folder).parts
            want.add(".".join([pkg, *sub]))
    assert want - listed == set(), "package folders missing from pyproject [tool.setuptools] packages"
    for folder, pkg in MAPPED.items():
        if folder != "raretarget":
            assert f'"{pkg}" = "{folder}"' in text


def test_old_module_names_are_the_moved_modules():
    """Each name of an earlier release imports as the module it moved to (same object: monkeypatching, isinstance
    and ``from old import X`` keep working), and ``raretarget.store`` keeps every name imported from it before."""
    import importlib

    for old, new in ALIASES.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
    from raretarget.store import (FORMAT_VERSION, Store, StoreError, _fsync_dir, atomic_write_bytes,  # noqa: F401
                                  atomic_write_parquet, private_dir)
    from raretarget.engine import Engine, IngestReport  # noqa: F401
    from raretarget.ingest.pipeline import IngestReport as R

    assert IngestReport is R
