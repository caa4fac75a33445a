"""Per-patient multimodal samples for contrastive training: from a store, or synthetic.

A *patient sample* is a dict::

    patient_id  str                 the store pseudonym
    record_id   int                 stable int64 id of the patient (patients.record_id, else a hash)
    notes       list[str]           note texts, oldest first            (absent modality: empty list)
    images      list[(int, array)]  (images.record_id, thumbnail uint8 (64*64,)) pairs
    labs        dict[str, float]    latest value per LOINC of the panel, canonical unit; None if none
    variants    list[dict]          gene, consequence, impact, clinvar, zygosity, af; None if none
    group       int                 (synthetic only) the latent disease group

:class:`PatientDataset` turns it into the model's input: ``text`` (notes concatenated – in training a
random subset in random order – and cut to ``max_note_chars``), ``image`` (one thumbnail: random in
training, the first otherwise), ``labs``, ``variants``; a modality without data is ``None``.

Held-out split: a patient is in validation when ``blake2b(seed|patient_id)`` mapped to [0, 1) is
below ``val_fraction`` – deterministic, independent of row order and store size.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Sequence

import numpy as np

from .labs import panel_loincs, reference_stats

# words used by the synthetic generator (readable, so MiniLM can also make sense of them)
_SYN_WORDS = (
    "seizures ataxia hypotonia cataract scoliosis hepatomegaly splenomegaly cardiomyopathy deafness nystagmus "
    "microcephaly macrocephaly myopathy neuropathy spasticity dystonia tremor anemia thrombocytopenia "
    "nephrocalcinosis proteinuria hematuria osteopenia fractures contractures ptosis retinopathy glaucoma "
    "arrhythmia hypertension hypoglycemia acidosis hyperammonemia lethargy vomiting diarrhea eczema "
    "alopecia ichthyosis hernia arachnodactyly obesity hyperlipidemia gout rickets dysphagia"
).split()
_NOISE = "fatigue headache cough fever rash pain insomnia dizziness nausea anxiety".split()
_SEVERITY = ("mild", "moderate", "severe")


def is_val(patient_id: str, val_fraction: float, seed: int = 0) -> bool:
    """Deterministic held-out membership from a hash of (seed, patient_id)."""
    h = hashlib.blake2b(f"{seed}|{patient_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64 < val_fraction


def split(samples: Sequence[dict], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[dict], list[dict]]:
    train, val = [], []
    for s in samples:
        (val if is_val(s["patient_id"], val_fraction, seed) else train).append(s)
    return train, val


def split_ids(patient_ids: Sequence[str], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """``(train ids, val ids)``, each sorted: :func:`split` on patient ids instead of samples (same membership)."""
    train, val = [], []
    for p in sorted(patient_ids):
        (val if is_val(p, val_fraction, seed) else train).append(p)
    return train, val


def _mix(*parts: Any) -> int:
    """A 63-bit seed from ``parts`` (stable across processes and Python versions, unlike ``hash``)."""
    h = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


def epoch_chunks(patient_ids: Sequence[str], chunk_patients: int, *, epoch: int = 0, seed: int = 0,
                 shuffle: bool = True, rank: int = 0, world_size: int = 1) -> list[list[str]]:
    """The patient chunks rank ``rank`` of ``world_size`` reads in epoch ``epoch``, in reading order.

    Every rank computes the same permutation of ``patient_ids`` (seeded by ``(seed, epoch)``; the given order when
    ``shuffle`` is false), keeps ``len // world_size`` of them (the same count on every rank, so every rank yields the
    same number of batches and DDP collectives line up; up to ``world_size - 1`` patients sit out an epoch, different
    ones each epoch when shuffled) and cuts its share into chunks of at most ``chunk_patients`` ids. A DataLoader
    worker ``w`` of ``W`` reads chunks ``w, w + W, ...`` (:func:`worker_chunks`)."""
    if chunk_patients < 1:
        raise ValueError(f"chunk_patients must be >= 1, got {chunk_patients}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of {world_size}")
    ids = list(patient_ids)
    if shuffle:
        random.Random(_mix("epoch", seed, epoch)).shuffle(ids)
    per = len(ids) // world_size
    mine = ids[rank * per:(rank + 1) * per]
    return [mine[i:i + chunk_patients] for i in range(0, per, chunk_patients)]


def worker_chunks(chunks: Sequence[Sequence[str]], worker: int = 0, num_workers: int = 1) -> list[tuple[int, list[str]]]:
    """``(chunk index, ids)`` of the chunks DataLoader worker ``worker`` of ``num_workers`` reads (round robin)."""
    return [(i, list(c)) for i, c in enumerate(chunks) if i % max(1, num_workers) == worker]


def stream_batches(n_items: int, batch_size: int, drop_last: bool) -> int:
    """Batches one worker makes of ``n_items`` patients: full batches, plus the partial last one unless
    ``drop_last`` (dropped only when the worker has more than one batch's worth, as the in-memory loader did)."""
    if n_items <= 0:
        return 0
    if drop_last and n_items > batch_size:
        return n_items // batch_size
    return -(-n_items // batch_size)


def shard_of(patient_id: str, shards: int) -> int:
    """Stable shard (0 .. shards-1) of a patient for sharded embedding jobs (hash of the pseudonymous id)."""
    h = hashlib.blake2b(f"shard|{patient_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") % shards


def store_genes(store: Any) -> list[str]:
    """Distinct gene symbols of the store's variants with a patient (sorted): the genes :func:`load_store_samples`
    would put in some sample, from one ``select distinct`` instead of every sample."""
    eng = _StoreSQL(store)
    t = eng.sql("select distinct gene from variants where patient_id is not null and gene is not null and gene <> ''")
    return sorted(t.column(0).to_pylist())


def store_lab_moments(store: Any, loincs: Sequence[str], exclude: Sequence[str] = ()) -> tuple[np.ndarray, ...]:
    """Per LOINC of ``loincs`` (in that order): ``(count, mean, population sd)`` of the patients' latest values
    (the values :func:`load_store_samples` puts in ``labs``), over every patient but ``exclude`` (the held-out
    ids). Arrays ``(L,)`` float64; mean/sd NaN where count is 0. One aggregate query: nothing per patient is
    held here, so its memory does not grow with the store."""
    eng = _StoreSQL(store)
    loincs = list(loincs)
    t = eng.sql("select loinc, count(v) as n, avg(v) as m, stddev_pop(v) as s from ("
                "select patient_id, loinc, arg_max(value, coalesce(effective, TIMESTAMP '1970-01-01')) as v "
                f"from observations where {_labs_filter(loincs)} "
                "and patient_id not in (select unnest(?::VARCHAR[])) group by 1, 2) group by 1",
                [sorted({str(p) for p in exclude})])
    n = np.zeros(len(loincs))
    m = np.full(len(loincs), np.nan)
    s = np.full(len(loincs), np.nan)
    pos = {c: i for i, c in enumerate(loincs)}
    for r in t.to_pylist():
        i = pos[r["loinc"]]
        n[i] = r["n"]
        m[i] = np.nan if r["m"] is None else r["m"]
        s[i] = np.nan if r["s"] is None else r["s"]
    return n, m, s


def store_patients(store: Any) -> list[str]:
    """Every patient id with a row in a table that :func:`load_store_samples` reads (sorted)."""
    eng = _StoreSQL(store)
    q = " union ".join(f"select distinct patient_id from {t} where patient_id is not null"
                       for t in ("patients", "notes", "images", "observations", "variants"))
    return sorted(eng.sql(q).column(0).to_pylist())


# stable int64 id for a patient without a ``patients`` row: the one definition is raretarget.schema's
from raretarget.store.schema import patient_record_id  # noqa: E402,F401


# ---- synthetic ------------------------------------------------------------------------------------
def _blob_image(rng: np.random.Generator, size: int, cx: float, cy: float, theta: float, amp: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (size / 8) ** 2))
    stripes = 0.5 + 0.5 * np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / (size / 5))
    img = 0.15 + 0.55 * amp * blob + 0.25 * stripes + rng.normal(0, 0.06, (size, size))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8).reshape(-1)


def synthetic_samples(n_patients: int = 256, n_groups: int = 8, seed: int = 0, p_missing: float = 0.2,
                      image_size: int = 64, n_background_genes: int = 200, n_background_variants: int = 4
                      ) -> tuple[list[dict], list[tuple[str, str]], list[str]]:
    """Random-but-structured patients sharing latent disease groups across modalities.

    Each group has a causal gene, 5 signature phenotype words, 4 shifted labs (±) and an image pattern
    (blob position + stripe orientation). Each patient also has a severity ``s`` ∈ [0.5, 1.5] shown
    by all modalities (severity word, size of lab shifts, blob brightness), so exact patients (not
    only groups) can be retrieved across modalities. Each modality is missing with ``p_missing``
    (at least two kept). Returns ``(samples, knowledge_pairs [(phrase, gene)], gene_vocabulary)``.
    """
    rng = np.random.default_rng([seed, 7])
    loincs = panel_loincs()
    mean, sd = reference_stats(loincs)
    L = len(loincs)
    groups = []
    for g in range(n_groups):
        groups.append({
            "words": list(rng.choice(_SYN_WORDS, 5, replace=False)),
            "labs": rng.choice(L, 4, replace=False), "dirs": rng.choice([-1.0, 1.0], 4),
            "cx": rng.uniform(16, 48) * image_size / 64, "cy": rng.uniform(16, 48) * image_size / 64,
            "theta": rng.uniform(0, np.pi), "gene": f"SYNG{g:03d}",
        })
    bg_genes = [f"BGG{i:04d}" for i in range(n_background_genes)]
    samples = []
    for i in range(n_patients):
        g = int(i % n_groups)
        G = groups[g]
        s = float(rng.uniform(0.5, 1.5))
        pid = "pt-" + hashlib.blake2b(f"syn|{seed}|{i}".encode(), digest_size=8).hexdigest()
        words = list(rng.choice(G["words"], int(rng.integers(3, 6)), replace=False))
        words += list(rng.choice(_NOISE, int(rng.integers(0, 3)), replace=False))
        rng.shuffle(words)
        sev = _SEVERITY[min(int((s - 0.5) * 3), 2)]
        text = f"{sev.capitalize()} presentation. Findings include {', '.join(words[:-1])} and {words[-1]}."
        vals = mean + sd * rng.normal(0, 0.6, L)
        vals[G["labs"]] += G["dirs"] * sd[G["labs"]] * 3.0 * s
        vals = np.maximum(vals, 0.0)
        keep = rng.random(L) > 0.3
        labs = {loincs[j]: float(vals[j]) for j in range(L) if keep[j]}
        img = _blob_image(rng, image_size, G["cx"] + rng.normal(0, 1.5), G["cy"] + rng.normal(0, 1.5),
                          G["theta"], s)
        causal = {"gene": G["gene"], "consequence": str(rng.choice(["missense_variant", "stop_gained",
                                                                      "frameshift_variant"])),
                  "impact": "HIGH", "clinvar": "pathogenic", "zygosity": str(rng.choice(["het", "hom_alt"])),
                  "af": float(10 ** rng.uniform(-6, -4))}
        bg = [{"gene": str(rng.choice(bg_genes)), "consequence": str(rng.choice(["synonymous_variant",
                                                                                "intron_variant"])),
               "impact": str(rng.choice(["LOW", "MODIFIER"])), "clinvar": "benign", "zygosity": "het",
               "af": float(10 ** rng.uniform(-2, -0.5))} for _ in range(int(rng.integers(1, n_background_variants + 1)))]
        mods = {"notes": [text], "images": [(i, img)], "labs": labs, "variants": [causal] + bg}
        drop = [m for m in mods if rng.random() < p_missing]
        for m in drop[: len(mods) - 2]:
            mods[m] = [] if m in ("notes", "images") else None
        samples.append({"patient_id": pid, "record_id": patient_record_id(pid), "group": g, **mods})
    pairs = []
    for G in groups:
        for _ in range(6):
            w = list(rng.choice(G["words"], int(rng.integers(1, 4)), replace=False))
            pairs.append((" and ".join(w), G["gene"]))
    return samples, pairs, [G["gene"] for G in groups] + bg_genes


# ---- store ----------------------------------------------------------------------------------------
class _StoreSQL:
    """A store's read-only ``sql`` for the readers here: an ``Engine`` (anything with ``.sql``) as given, a path
    through :class:`raretarget.store.Store` (the engine is not needed to read a store)."""

    def __init__(self, store: Any):
        if hasattr(store, "sql"):
            self.sql = store.sql
        else:
            from raretarget.store import Store

            self.sql = Store.open(store).sql




# The rows that make a sample (one WHERE clause per table), shared by load_store_samples and sample_patients so that
# the patients listed are exactly the patients that get a sample.
_HAS = {
    "patients": "patient_id is not null",
    "notes": "patient_id is not null and text is not null and length(trim(text)) > 0",
    "images": "patient_id is not null and thumbnail is not null",
    "variants": "patient_id is not null and gene is not null",
}


def _labs_filter(loincs: Sequence[str]) -> str:
    codes = ", ".join("'" + c.replace("'", "''") + "'" for c in loincs) or "''"
    return ("patient_id is not null and value is not null and unit is not null and isfinite(value) "
            f"and loinc in ({codes})")


def as_store(store: Any):
    """The :class:`raretarget.store.Store` of ``store``: a Store as given, an Engine's, or the store at a path."""
    if hasattr(store, "iter_parts"):
        return store
    if hasattr(getattr(store, "store", None), "iter_parts"):
        return store.store
    from raretarget.store import Store

    return Store.open(store)


# the columns each table's sample condition reads
_HAS_COLUMNS = {"patients": ["patient_id"], "notes": ["patient_id", "text"], "images": ["patient_id", "thumbnail"],
                "variants": ["patient_id", "gene"], "observations": ["patient_id", "value", "unit", "loinc"]}


def sample_patients(store: Any, loincs: Sequence[str] | None = None, group_bytes: int = 32 << 20) -> list[str]:
    """The ids of the patients :func:`load_store_samples` makes a sample of (sorted): the streamed training loader
    lists them (a few bytes each) instead of loading the samples.

    The conditions are the readers' own SQL (``_HAS``, the labs filter), run on the store's parts a group of at
    most ``group_bytes`` (Arrow bytes) at a time: one SQL ``union`` over the whole store held ~0.75 GB at 100k
    patients (every image's thumbnail scanned at once), which grew with the store."""
    import itertools

    import duckdb
    import pyarrow as pa

    from raretarget.store.safe_sql import SETTINGS

    st = as_store(store)
    where = {**_HAS, "observations": _labs_filter(list(loincs or panel_loincs()))}
    out: set[str] = set()
    con = duckdb.connect(":memory:", config=dict(SETTINGS))
    try:
        for name, cond in where.items():
            group: list = []
            held = 0
            # the parts one at a time, then an end marker that runs the last group
            for _, t in itertools.chain(st.iter_parts(name, _HAS_COLUMNS[name], batch_rows=65_536), [(None, None)]):
                if t is not None and t.num_rows:
                    group.append(t)
                    held += t.nbytes
                if group and (t is None or held > group_bytes):
                    con.register("part_rows", pa.concat_tables(group))
                    out.update(r[0] for r in con.execute(
                        f"select distinct patient_id from part_rows where {cond}").fetchall())
                    con.unregister("part_rows")
                    group, held = [], 0
    finally:
        con.close()
    return sorted(out)


def _thumbnails(col) -> np.ndarray:
    """The ``images.thumbnail`` column (fixed-size lists of uint8, no nulls) as one ``(n, side*side)`` uint8 array,
    without a Python int per pixel (``to_pylist`` made 4,096 of them per image: a third of a chunk's load time)."""
    parts = [c.flatten().to_numpy(zero_copy_only=False).reshape(len(c), -1) for c in col.chunks if len(c)]
    if not parts:
        return np.zeros((0, 0), dtype=np.uint8)
    return np.concatenate(parts).astype(np.uint8, copy=False)


def load_store_samples(store: Any, loincs: Sequence[str] | None = None,
                       patients: Sequence[str] | None = None) -> list[dict]:
    """One sample per patient found in any table (see module doc). ``store``: path or ``Engine``.
    ``patients``: only these patient ids (an incremental re-embed); None = every patient."""
    eng = _StoreSQL(store)
    loincs = list(loincs or panel_loincs())
    pf, params = "", None
    if patients is not None:
        if not len(patients):
            return []
        pf, params = " and patient_id in (select unnest(?))", [sorted({str(p) for p in patients})]
    ids: dict[str, dict] = {}

    def sample(pid: str) -> dict:
        s = ids.get(pid)
        if s is None:
            s = ids[pid] = {"patient_id": pid, "record_id": None, "notes": [], "images": [], "labs": None,
                            "variants": None}
        return s

    for r in eng.sql(f"select patient_id, min(record_id) as rid from patients where {_HAS['patients']}{pf} "
                     "group by 1", params).to_pylist():
        pid, rid = r["patient_id"], r["rid"]
        sample(pid)["record_id"] = int(rid)
    for r in eng.sql(f"select patient_id, text from notes where {_HAS['notes']}{pf} "
                     "order by patient_id, date nulls last, record_id", params).to_pylist():
        sample(r["patient_id"])["notes"].append(r["text"])
    t = eng.sql(f"select patient_id, record_id, thumbnail from images where {_HAS['images']}{pf} "
                "order by patient_id, acquired nulls last, record_id", params)
    for pid, rid, th in zip(t.column("patient_id").to_pylist(), t.column("record_id").to_pylist(),
                            _thumbnails(t.column("thumbnail"))):
        sample(pid)["images"].append((int(rid), th))
    for r in eng.sql("select patient_id, loinc, arg_max(value, coalesce(effective, TIMESTAMP '1970-01-01')) as v "
                     f"from observations where {_labs_filter(loincs)}{pf} group by 1, 2", params).to_pylist():
        s = sample(r["patient_id"])
        if s["labs"] is None:
            s["labs"] = {}
        s["labs"][r["loinc"]] = float(r["v"])
    # ordered like notes and images: a sample's variants must not depend on the store's part layout or on the
    # scan's threads (the order reaches the variant tower's input)
    for r in eng.sql("select patient_id, gene, consequence, impact, clinvar, zygosity, af from variants "
                     f"where {_HAS['variants']}{pf} order by patient_id, record_id", params).to_pylist():
        s = sample(r.pop("patient_id"))
        if s["variants"] is None:
            s["variants"] = []
        s["variants"].append(r)
    out = []
    for pid in sorted(ids):
        s = ids[pid]
        if s["record_id"] is None:
            s["record_id"] = patient_record_id(pid)
        out.append(s)
    return out


def hpo_knowledge(genes: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Gene symbol -> labels of its HPO terms (hpo3 gene annotations), Phenotypic abnormality subtree
    only; restricted to ``genes`` when given."""
    from raretarget.ingest.genes import hpo_gene_annotations
    from raretarget.vocab.hpo import ontology

    ann = hpo_gene_annotations()
    Ontology = ontology()
    keep = set(genes) if genes is not None else None
    root = Ontology.get_hpo_object("HP:0000118")
    names: dict[int, str | None] = {}
    out: dict[str, list[str]] = {}
    for g, terms in ann.items():
        if keep is not None and g not in keep:
            continue
        labels = []
        for t in sorted(terms):
            if t not in names:
                term = Ontology[t]
                names[t] = term.name if term.child_of(root) else None
            if names[t]:
                labels.append(names[t])
        if labels:
            out[g] = sorted(labels)
    return out


def verdict_pairs(store: Any) -> list[tuple[list[str], str, str]]:
    """The experts' verdicts of a store as training pairs ``(HPO term labels, gene, verdict)``, verdict
    ``confirmed`` (a positive profile ↔ gene pair) or ``rejected`` (a hard negative); ``unsure`` is left out.

    From :func:`raretarget.store.reviews.training_pairs` (the latest verdict per (hypothesis, gene)); each HPO id
    becomes its label in hpo3's release (ids it does not know are dropped, and a profile with no label
    left). Only public HPO labels and gene symbols: no note, reviewer or patient
    data reaches training. Sorted, so a run's pairs do not depend on file order. ``store``: an Engine, a
    Store or a path."""
    from raretarget.store.reviews import training_pairs
    from raretarget.vocab.hpo import ontology

    Ontology = ontology()
    out = set()
    for ids, gene, verdict in training_pairs(store):
        if verdict not in ("confirmed", "rejected"):
            continue
        labels = set()
        for t in ids:
            try:
                labels.add(Ontology.get_hpo_object(str(t)).name)
            except (KeyError, RuntimeError, ValueError):
                continue                  # an id this HPO release does not know: nothing to learn from it
        if labels:
            out.add((tuple(sorted(labels)), str(gene).upper(), verdict))
    return [(list(ls), g, v) for ls, g, v in sorted(out)]


def hpo_aliases(labels) -> dict[str, list[str]]:
    """Term label -> its EXACT synonyms in the packaged hp.obo ("Seizure" -> ["Epileptic seizure",
    "Seizures"]), for the labels given (matched by label; labels the file lacks get none)."""
    from raretarget.ingest.phenotypes import load_obo

    want = set(labels)
    terms, _ = load_obo()
    out: dict[str, list[str]] = {}
    for t in terms.values():
        if t.name in want and t.synonyms:
            out.setdefault(t.name, []).extend(t.synonyms)
    return out


# ---- torch side -----------------------------------------------------------------------------------
class PatientDataset:
    """Samples -> model inputs (``text``/``image``/``labs``/``variants``, ``None`` when absent)."""

    def __init__(self, samples: Sequence[dict], train: bool = False, max_note_chars: int = 2000, seed: int = 0):
        self.samples, self.train, self.max_note_chars = list(samples), train, int(max_note_chars)
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        s = self.samples[i]
        notes = list(s.get("notes") or [])
        images = list(s.get("images") or [])
        if self.train and len(notes) > 1:
            notes = self.rng.sample(notes, self.rng.randint(1, len(notes)))
        if self.train and len(images) > 1:
            images = [self.rng.choice(images)]
        text = "\n".join(notes)[: self.max_note_chars] if notes else None
        item = {"patient_id": s["patient_id"], "record_id": s["record_id"], "text": text,
                "image": images[0][1] if images else None, "labs": s.get("labs") or None,
                "variants": s.get("variants") or None}
        if "group" in s:
            item["group"] = s["group"]
        return item


class Collate:
    """DataLoader ``collate_fn``: ``model.collate`` (+ in training a knowledge-pair batch: up to
    ``knowledge_batch`` distinct genes, each with one random term label)."""

    def __init__(self, model, train: bool, knowledge: dict[str, list[str]] | None = None,
                 knowledge_batch: int = 32, seed: int = 0):
        self.model, self.train = model, train
        self.knowledge = {g: v for g, v in (knowledge or {}).items() if v}
        self.genes = sorted(self.knowledge)
        self.knowledge_batch = int(knowledge_batch)
        self.rng = random.Random(seed)

    def __call__(self, items: list[dict]) -> dict:
        batch = self.model.collate(items, train=self.train)
        if self.train and self.genes and self.knowledge_batch >= 2 and {"text", "variants"} <= set(self.model.encoders):
            genes = self.rng.sample(self.genes, min(self.knowledge_batch, len(self.genes)))
            texts = [self.rng.choice(self.knowledge[g]) for g in genes]
            batch["knowledge"] = self.model.collate_knowledge(texts, genes)
        return batch
