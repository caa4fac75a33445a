"""Hypothesis queries: turn free text, HPO terms, a Phenopacket, a patient or an image into one query
vector in the shared space, search the per-modality FAISS indexes, merge by cosine, filter.

Modalities in results: ``note`` (a patient's notes, text tower), ``image`` (one DICOM image),
``labs`` (a patient's lab profile), ``variants`` (a patient's variant set), ``patient`` (the mean of
a patient's modality vectors, re-normalised), ``gene`` (a gene of the variant tower's vocabulary).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute in search_spec)

from raretarget.vocab.modalities import ENCODER_TO_MODALITY
from raretarget.vocab.refs import gene_of_ref

#: encoder modality name → name used in the store / results (the one set: raretarget.vocab.modalities)
MODALITY_NAMES = ENCODER_TO_MODALITY
RESULT_SCHEMA = pa.schema([
    pa.field("rank", pa.int32()), pa.field("score", pa.float32()), pa.field("modality", pa.string()),
    pa.field("record_id", pa.int64()), pa.field("patient_id", pa.string()), pa.field("gene", pa.string()),
    pa.field("source_ref", pa.string()),
])


def hpo_labels(terms: Sequence[str], mapper) -> list[str]:
    """HPO ids → labels (packaged hp.obo; obsolete ids follow replaced_by; unknown ids raise)."""
    out = []
    for t in terms:
        cur = mapper.current(t)
        if cur is None:
            raise ValueError(f"unknown HPO term {t!r}")
        out.append(mapper.term(cur).name)
    return out


def phenotype_text(observed: Sequence[str], excluded: Sequence[str], mapper) -> str:
    """A phenotype profile as the text tower's input: labels of observed terms, 'no X' for excluded."""
    parts = hpo_labels(observed, mapper)
    parts += [f"no {x.lower()}" for x in hpo_labels(excluded, mapper)]
    return "; ".join(parts)


def image_thumbnail(path: str | os.PathLike) -> np.ndarray:
    """The same 64x64 uint8 thumbnail ingest stores, computed from a DICOM file (no store write)."""
    import pydicom

    from raretarget.ingest.dicom import decode_pixels

    ds = pydicom.dcmread(str(path))
    status, _features, thumb = decode_pixels(ds)
    if thumb is None:
        raise ValueError(f"{Path(path).name}: no decodable pixel data ({status})")
    return np.asarray(thumb, dtype=np.uint8)


class Searcher:
    """Loaded model + indexes + id→(patient, source_ref) lookups for one store generation."""

    def __init__(self, engine, model, model_version: str, indexes: dict, lookups: dict[str, pa.Table]):
        self.engine = engine
        self.model = model
        self.model_version = model_version
        self.indexes = indexes
        self.lookups = {m: dict(zip(t.column("record_id").to_pylist(),
                                    zip(t.column("patient_id").to_pylist(), t.column("source_ref").to_pylist())))
                        for m, t in lookups.items()}
        self._patient_vectors: tuple[dict, np.ndarray] | None = None
        pt = lookups.get("patient")
        if pt is not None and "vector" in pt.column_names:
            from raretarget.index.generations import vectors_of

            self._patient_vectors = ({p: i for i, p in enumerate(pt.column("patient_id").to_pylist())},
                                     vectors_of(pt) if pt.num_rows else np.zeros((0, 0), np.float32))

    def patient_vector(self, patient_id: str) -> np.ndarray | None:
        """The patient's fused vector ``(1, D)`` float32 as read when this searcher opened its generation
        (None when it read none for that patient). A reader opened before a nightly update keeps
        searching with the vectors of its own view, not the store's newer ones."""
        if self._patient_vectors is None:
            return None
        rows, vecs = self._patient_vectors
        i = rows.get(patient_id)
        return None if i is None else vecs[i:i + 1]

    # ---- query vectors ---------------------------------------------------------------------------
    def encode_text(self, text: str) -> np.ndarray:
        """``(1, D)`` float32 query vector, on the model's device (bf16 autocast on CUDA)."""
        import torch

        from raretarget.encoders.device import inference_autocast

        with torch.no_grad(), inference_autocast(self.model._device()):
            self.model.eval()
            return self.model.encode_text([text]).float().cpu().numpy()

    def encode_image(self, path) -> np.ndarray:
        from raretarget.encoders.training import encode_samples

        enc = encode_samples(self.model, [{"image": image_thumbnail(path)}])
        return enc["image"][1]

    # ---- search ------------------------------------------------------------------------------------
    def search(self, qvec: np.ndarray, k: int, modalities: Sequence[str] | None, allowed: set[str] | None,
               exclude_patient: str | None = None) -> pa.Table:
        mods = [m for m in (modalities or self.indexes) if m in self.indexes]
        missing = [m for m in (modalities or []) if m not in self.indexes]
        if missing:
            raise ValueError(f"no index for modality {missing}; indexed: {sorted(self.indexes)}")
        rows = []
        for m in mods:
            idx = self.indexes[m]
            fetch = k
            while True:
                kk = min(fetch, len(idx))
                scores, ids = idx.search(qvec, kk)
                got = []
                for s, rid in zip(scores[0].tolist(), ids[0].tolist()):
                    if rid == -1:
                        continue
                    pid, ref = self.lookups.get(m, {}).get(rid, (None, None))
                    if m != "gene" and ((allowed is not None and pid not in allowed) or
                                        (exclude_patient is not None and pid == exclude_patient)):
                        continue
                    got.append((s, m, rid, pid, ref))
                if len(got) >= k or kk >= len(idx):
                    break
                fetch *= 4                      # filters removed too many: over-fetch and retry
            rows.extend(got[:k])
        rows.sort(key=lambda r: -r[0])
        rows = rows[:k]
        genes = [gene_of_ref(ref) if m == "gene" else None for _, m, _, _, ref in rows]
        return pa.table({
            "rank": pa.array(range(1, len(rows) + 1), pa.int32()),
            "score": pa.array([r[0] for r in rows], pa.float32()),
            "modality": [r[1] for r in rows], "record_id": pa.array([r[2] for r in rows], pa.int64()),
            "patient_id": pa.array([r[3] for r in rows], pa.string()), "gene": pa.array(genes, pa.string()),
            "source_ref": pa.array([r[4] for r in rows], pa.string()),
        }, schema=RESULT_SCHEMA)


def open_searcher(ctx, model: dict, gens, device: str = "auto") -> Searcher:
    """Load ``model`` (``{"model_version", "path"}``) on ``device`` and the current index generation of ``gens``
    (refuses an index of another model) with its id → (patient, source_ref) lookups; patient vectors too, so a
    patient query uses this view's vector (:meth:`Searcher.patient_vector`)."""
    from raretarget.encoders.training import load_model

    indexes = gens.open(model_version=model["model_version"])
    cols = ["record_id", "patient_id", "source_ref"]
    lookups = {m: gens.read_embeddings(model["model_version"], m).select(cols + ["vector"] * (m == "patient"))
               for m in indexes}
    # a context that keeps its loaded model (raretarget.context.Context.loaded_model) lends it: a searcher
    # rebuilt after a night then costs no second load of the same weights
    same = getattr(ctx, "loaded_model", None) and ctx.current_model() == model
    net = ctx.loaded_model(device) if same else load_model(model["path"], device=device)
    return Searcher(ctx, net, model["model_version"], indexes, lookups)


def search_spec(ctx, spec, *, k: int = 20, modalities: Sequence[str] | None = None, where: str | None = None,
                genes: Sequence[str] | None = None, pathogenic_only: bool = False, labs=None) -> pa.Table:
    """Top-``k`` search for a resolved one-form query (:class:`raretarget.query.spec.QuerySpec`) over ``ctx``
    (a :class:`raretarget.context.Context` or an Engine: ``searcher()``, ``sql``, ``resources``, ``generations()``).
    Returns a RESULT_SCHEMA table; HPO ids replaced or dropped by the query rule are listed in its schema
    metadata ``query_notes`` (JSON ``{id: why}``)."""
    import json

    from .filters import allowed_patients

    form = spec.form
    s = ctx.searcher()
    exclude = None
    if form == "text":
        q = s.encode_text(spec.text)
    elif form in ("phenotypes", "phenopacket"):
        spec.require_searchable()
        q = s.encode_text(spec.phenotype_text(ctx.resources.phenotypes))
    elif form == "patient":
        q = s.patient_vector(spec.patient)            # the loaded generation's vector: one consistent view
        if q is None:
            t = ctx.generations().read_embeddings(s.model_version, "patient")
            hit = t.filter(pa.compute.equal(t.column("patient_id"), spec.patient))
            if hit.num_rows == 0:
                raise ValueError(f"unknown patient {spec.patient!r} (no embeddings)")
            from raretarget.index.generations import vectors_of

            q = vectors_of(hit)[:1]
        exclude = spec.patient
    else:
        q = s.encode_image(spec.image)
    allowed = allowed_patients(ctx.sql, where=where, genes=genes, pathogenic_only=pathogenic_only, labs=labs)
    out = s.search(q, k, modalities, allowed, exclude_patient=exclude)
    if spec.notes:
        out = out.replace_schema_metadata({**(out.schema.metadata or {}),
                                           b"query_notes": json.dumps(spec.notes).encode()})
    return out
