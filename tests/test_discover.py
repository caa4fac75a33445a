"""Input discovery (issue 20): the columnar :class:`InputList` gives the files, order, kinds and skipped sidecars
that the list of ``InputFile``/``Path`` objects gave (``sorted(rglob)`` order), at a fraction of the memory."""

from __future__ import annotations

import os
from pathlib import Path

from raretarget.ingest import core
from raretarget.ingest.core import InputFile, Planned, classify, discover


def _old_discover(paths):
    """The discovery before issue 20 (an InputFile + Path per file), the reference for order and skips."""
    out, skipped, seen = [], [], set()
    rank = {"fhir": 0, "dicom": 2, "vcf": 3, "unknown": 4}
    for p in paths:
        p = Path(p)
        files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
        for f in files:
            rp = f.resolve()
            if rp in seen:
                continue
            seen.add(rp)
            rel = f.relative_to(p) if p.is_dir() else Path(f.name)
            if any(part.startswith(".") for part in rel.parts) or f.name.lower().endswith(core._SKIP_SUFFIXES) \
                    or f.name.upper().startswith(("LICENSE", "README", "SOURCES", "COPYRIGHT")):
                skipped.append((str(f), "sidecar/index/hidden file, not an input record"))
                continue
            kind = classify(f)
            order = rank[kind] * 10 + ((0 if f.name.startswith("Patient") else 1) if kind == "fhir" else 0)
            out.append(InputFile(order, f, kind))
    out.sort()
    return out, skipped


def _tree(root: Path) -> None:
    """Names whose string order differs from their path order ('a-b' < 'a/x' as text, not as parts), nested and
    hidden folders, sidecars, a symlinked file and a symlinked folder, every kind of input."""
    fhir = b'{"resourceType": "Bundle", "type": "collection", "entry": []}'
    files = {
        "a/x.json": fhir, "a-b.json": fhir, "a.b.json": fhir, "a b/z.json": fhir, "A.json": fhir,
        "Patient.ndjson": b"{}\n", "sub/Patient-2.ndjson": b"{}\n", "sub/deeper/c.ndjson": b"{}\n",
        "img/1.dcm": b"\0" * 128 + b"DICM", "img/DICOMDIR": b"\0" * 132, "noext": b"\0" * 128 + b"DICM",
        "v/x.vcf.gz": b"\x1f\x8b", "v/x.vcf.gz.tbi": b"", "README.md": b"", "LICENSE": b"",
        ".hidden/h.json": fhir, "sub/.h2.json": fhir, "junk.bin": b"??", "\u00e9t\u00e9.json": fhir,
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    os.symlink(root / "a-b.json", root / "link.json")          # a symlinked file: a file (deduplicated)
    os.symlink(root / "sub", root / "linkdir")                  # a symlinked folder: not entered


def _as_tuples(inputs):
    return [(i.order, str(i.path), i.kind) for i in inputs]


def test_discover_gives_the_old_order_kinds_and_skips(tmp_path, monkeypatch):
    _tree(tmp_path / "in")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "0.json").write_bytes(b"{}")
    cases = [
        [tmp_path / "in"],
        [tmp_path / "other", tmp_path / "in", tmp_path / "in" / "a-b.json"],          # overlapping inputs
        [tmp_path / "in" / "sub" / "deeper" / "c.ndjson", tmp_path / "in" / "sub"],
    ]
    for paths in cases:
        new, skipped = discover(paths)
        old, old_skipped = _old_discover(paths)
        assert _as_tuples(new) == _as_tuples(old)
        assert skipped == old_skipped
        assert len(new) == len(old) and new.kinds() == sorted({i.kind for i in old})
    # relative inputs ("." and a relative folder) keep the paths Path would write
    monkeypatch.chdir(tmp_path)
    for paths in ([Path(".")], [Path("in"), Path("/") / tmp_path / "other"]):
        assert _as_tuples(discover(paths)[0]) == _as_tuples(_old_discover(paths)[0])
        assert discover(paths)[1] == _old_discover(paths)[1]


def test_input_list_holds_hashes_and_plans_know_their_positions(tmp_path):
    _tree(tmp_path)
    inputs, _ = discover([tmp_path])
    digest = "ab" * 32
    inputs.set_hash(2, digest, "f0123456789ab")
    inputs.set_hash(4, digest.upper(), "f" + "9" * 20)                # a longer reference widens the column
    assert inputs.digest(2) == digest and inputs.ref(2) == "f0123456789ab"
    assert inputs.digest(4) == digest and inputs.ref(4) == "f" + "9" * 20
    plan = Planned(inputs, [2, 4])
    (a, da, ra), (b, db, rb) = plan[0], plan[1]
    assert (a.pos, b.pos) == (0, 1) and a.path == inputs[2].path and (da, ra) == (digest, "f0123456789ab")
    assert len(plan) == 2 and [x[2] for x in plan] == ["f0123456789ab", "f" + "9" * 20]


def test_input_list_memory_per_file_is_small(tmp_path):
    """The discovered inputs take about 150 bytes a file once hashed (an InputFile with its Path was ~1.3 KB a
    file: ~250 MB held for a whole ingest of 185k files)."""
    import tracemalloc

    for i in range(3000):
        d = tmp_path / f"{i % 30:02d}-2c1d0a8e-4b7f-4d52-9a3c-{i:012d}"
        d.mkdir(exist_ok=True)
        (d / f"2.25.13238640483914951154167987714891718{i:04d}.json").write_bytes(b"{}")
    tracemalloc.start()
    try:
        inputs, _ = discover([tmp_path])
        for i in range(len(inputs)):
            inputs.set_hash(i, f"{i:064x}", f"f{i:012x}")
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(inputs) == 3000
    assert held / len(inputs) < 300
