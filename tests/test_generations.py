"""Embeddings in the store and index generations: atomic publish, pruning, model-version guard."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pyarrow as pa
import pytest

from raretarget import schema as S
from raretarget.index import IndexMismatchError
from raretarget.index.generations import Generations, vectors_of


def _emb(n, d, version, seed=0, normalise=True):
    v = np.random.default_rng(seed).normal(size=(n, d)).astype("float32")
    if normalise:
        v /= np.linalg.norm(v, axis=1, keepdims=True)
    ids = S.record_ids("notes", [f"r{i}" for i in range(n)])
    return v, ids, pa.table({"record_id": ids, "patient_id": [f"pt-{i % 7}" for i in range(n)],
                             "modality": ["note"] * n, "model_version": [version] * n,
                             "vector": pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), d)})


def test_embeddings_must_be_fixed_size_and_normalised(tmp_path):
    g = Generations(tmp_path)
    v, ids, t = _emb(20, 16, "m1", normalise=False)
    with pytest.raises(ValueError, match="L2-normalised"):
        g.write_embeddings("m1", "note", t)
    v, ids, t = _emb(20, 16, "m1")
    with pytest.raises(ValueError, match="model_version"):
        g.write_embeddings("m2", "note", t)
    g.write_embeddings("m1", "note", t)
    back = g.read_embeddings("m1", "note")
    assert back.schema.field("vector").type == pa.list_(pa.float32(), 16)
    np.testing.assert_array_equal(vectors_of(back), v)
    assert g.embedding_counts("m1") == {"note": 20}


def test_generations_publish_prune_and_refuse_other_models(tmp_path):
    g = Generations(tmp_path)
    v, ids, t = _emb(200, 16, "m1")
    g.write_embeddings("m1", "note", t)
    info = g.build("m1", keep=2)
    idx = g.open("m1")["note"]
    scores, got = idx.search(v[:5], 1)
    assert (got[:, 0] == ids[:5]).all() and np.allclose(scores[:, 0], 1, atol=1e-5)
    old = g.current()
    for _ in range(3):
        g.build("m1", keep=2)
    gens = sorted(p.name for p in (tmp_path / "index").glob("gen-*"))
    assert len(gens) == 2 and g.current()["generation"] == old["generation"] + 3
    with pytest.raises(IndexMismatchError, match="rebuild the index"):
        g.open("m2")
    # a reader that kept an older (still present) generation can open it
    g.open("m1", generation={**g.current(), "generation": g.current()["generation"] - 1})
