"""Issue 17, item 9: batch ranking validates its input (ids never become paths, k > 0, clear errors)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import DATA, ROOT
from raretarget import Engine
from raretarget.prioritize.batch import load_hypotheses, output_name, run_batch

BAD = DATA / "bad" / "batch"


def test_ids_never_become_paths_and_bad_k_refused(tmp_path):
    eng = Engine.open(tmp_path / "s", create=True)
    out = tmp_path / "deep" / "out"
    s = run_batch(eng, load_hypotheses(BAD / "evil_ids.yaml"), out, k=3, progress=False)
    st = {h["id"]: h for h in s["hypotheses"]}
    assert s["ok"] == 3 and s["skipped"] == 4
    for hid in ("negative-k", "zero-k", "bool-k"):
        assert st[hid]["status"] == "skipped" and "k must be a positive integer" in st[hid]["reason"]
    assert "phenotypes must be a list" in st["string-phenotypes"]["reason"]
    files = {h["file"] for h in s["hypotheses"] if h["file"]}
    assert len(files) == 3                                   # three ids, three distinct files
    for f in files:
        assert "/" not in f and not f.startswith(".")
        assert (out / f).is_file()
    written = {p.name for p in out.iterdir()}
    assert not any(n.startswith(".") for n in written)
    assert not (tmp_path / "etc").exists() and not (tmp_path / "deep" / "etc").exists()
    assert all(f.parent == out for f in out.rglob("*"))
    import pyarrow.parquet as pq

    assert pq.read_table(out / st["../../etc/evil"]["file"]).num_rows == 2
    with pytest.raises(ValueError, match="positive"):
        run_batch(eng, [], tmp_path / "o2", k=-5, progress=False)


def test_output_names_unique_and_safe():
    used: set[str] = set()
    names = [output_name(x, used) for x in ("a", "a/", "../a", ".a", "", "a")]
    assert len(set(names)) == len(names) and names[0] == "a"
    assert all(n and not n.startswith(".") and "/" not in n for n in names)


def test_malformed_yaml_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"malformed\.yaml: malformed YAML at line \d+"):
        load_hypotheses(BAD / "malformed.yaml")
    Engine.open(tmp_path / "s", create=True)
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "rank_candidates.py"), f"store={tmp_path / 's'}",
                        f"hypotheses={BAD / 'malformed.yaml'}", f"out={tmp_path / 'o'}", "k=3"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "malformed YAML at line" in r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "rank_candidates.py"), f"store={tmp_path / 's'}",
                        f"hypotheses={BAD / 'evil_ids.yaml'}", f"out={tmp_path / 'o'}", "k=-1"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "k must be a positive integer" in r.stderr
