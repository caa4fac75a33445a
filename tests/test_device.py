"""Device handling of the encoders (issue 19): every tensor the package creates is placed explicitly, so
code that only a GPU run takes (knowledge phase, training step, mixed-precision embedding) cannot leave a
tensor on the CPU; ``device="auto"``; the batched text path gives the same ids / vectors as before.

The CPU check: :class:`RefuseUnplaced`, a torch function mode (the mechanism behind
``torch.set_default_device``) that raises when code of the ``raretarget`` package calls a tensor factory
(``zeros``, ``arange``, ``tensor``, ``as_tensor`` of a list, ``randn``, ...) without ``device=``. Module
constructors (``__init__``) are exempt: parameters and buffers move with ``.to()``. Under the mode the
same code runs on CPU that runs on the GPU; without an explicit device a tensor would silently stay on
the CPU there (issue 19: ``pca_whitening_``'s ``W`` on the CPU met ``mu`` on CUDA).
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.overrides import TorchFunctionMode  # noqa: E402

D = 16


class RefuseUnplaced(TorchFunctionMode):
    """Raise ``AssertionError`` for a tensor factory called without ``device=`` from ``raretarget`` code."""

    def __init__(self):
        super().__init__()
        from torch.utils._device import _device_constructors

        self.ctors = _device_constructors()
        self.checked = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.ctors and kwargs.get("device") is None:
            f = sys._getframe(1)
            mod = f.f_globals.get("__name__", "")
            follows = func in (torch.as_tensor, torch.asarray) and args and isinstance(args[0], torch.Tensor)
            if mod.startswith("raretarget.") and f.f_code.co_name != "__init__" and not follows:
                raise AssertionError(f"{mod}.{f.f_code.co_name} line {f.f_lineno}: torch.{func.__name__}(...) "
                                     "without device= (it would stay on the CPU when the inputs are on a GPU)")
            self.checked += mod.startswith("raretarget.")
        return func(*args, **kwargs)


def _tiny_model(terms: int = 0, knowledge: bool = True):
    from raretarget.encoders.model import MultiModalModel

    genes = ["G1", "G2", "G3", "G4", "G5", "G6"]
    enc = {"text": {"name": "text", "backbone": "tiny", "freeze_backbone": True, "max_length": 32,
                    "segment_length": 16, "terms": terms, "term_aliases": 2 if terms else 0},
           "image": {"name": "image", "arch": "small", "image_size": 32, "features": 16},
           "labs": {"name": "labs", "hidden": 32},
           "variants": {"name": "variants", "genes": genes, "dim": 16, "feature_dim": 32 if knowledge else 0,
                        "term_path": bool(terms)}}
    torch.manual_seed(0)
    return MultiModalModel(enc, embed_dim=D)


KNOWLEDGE = {"G1": ["Seizure", "Ataxia"], "G2": ["Ptosis", "Seizure"], "G3": ["Hypotonia"],
             "G4": ["Ataxia", "Short stature", "Ptosis"], "G5": ["Cataract"], "G6": ["Seizure", "Cataract"]}
ALIASES = {"Seizure": ["Seizures", "Epileptic seizure"]}


def _items(n: int = 6):
    from raretarget.encoders.data import PatientDataset, synthetic_samples

    samples, _, _ = synthetic_samples(n, 3, seed=1, p_missing=0.0)
    for s in samples:       # genes of the tiny model's vocabulary
        for v in s["variants"] or []:
            v["gene"] = "G" + str(1 + sum(map(ord, v["gene"])) % 6)
    return [PatientDataset(samples, False)[i] for i in range(len(samples))]


# ---- the check itself -----------------------------------------------------------------------------
def test_refuse_unplaced_catches_a_factory_without_device():
    ns = {"__name__": "raretarget.fake", "torch": torch}
    exec("def f(x):\n    return torch.zeros(2, dtype=x.dtype) + x\n"
         "def g(x):\n    return torch.zeros(2, dtype=x.dtype, device=x.device) + x\n"
         "def h(x):\n    return torch.as_tensor(x)\n", ns)
    x = torch.ones(2)
    with RefuseUnplaced():
        with pytest.raises(AssertionError, match="torch.zeros"):
            ns["f"](x)
        assert torch.equal(ns["g"](x), x) and ns["h"](x) is x
    assert torch.equal(ns["f"](x), x)          # outside the mode nothing changes


def test_pca_whitening_creates_its_map_on_the_features_device():
    from raretarget.encoders.knowledge import pca_whitening_

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(40, 12, generator=g)
    ref, lin = torch.nn.Linear(12, 8), torch.nn.Linear(12, 8)
    pca_whitening_(ref, feats)
    with RefuseUnplaced():
        pca_whitening_(lin, feats)
    assert torch.equal(lin.weight, ref.weight) and torch.equal(lin.bias, ref.bias)
    z = lin(feats)
    assert z[:, :8].mean(0).abs().max() < 1e-4 and torch.allclose(z.var(0), torch.ones(8), atol=0.05)


# ---- the GPU-only paths, on CPU -------------------------------------------------------------------
def test_knowledge_phase_training_step_and_embedding_place_every_tensor():
    """The knowledge phase (with term tables and PCA init), a training step (patient + knowledge loss,
    backward) and mixed-precision prefetched embedding run under :class:`RefuseUnplaced` and give what
    they give without it."""
    from raretarget.encoders.data import Collate
    from raretarget.encoders.knowledge import align_knowledge
    from raretarget.encoders.model import multimodal_loss, clip_loss
    from raretarget.encoders.training import encode_samples

    def run(strict: bool):
        model = _tiny_model(terms=8)
        items = _items()
        mode = RefuseUnplaced() if strict else None
        if mode:
            mode.__enter__()
        try:
            info = align_knowledge(model, KNOWLEDGE, steps=4, batch_size=4, max_terms=3, seed=0, device="cpu",
                                   aliases=ALIASES)
            model.train()
            batch = Collate(model, True, KNOWLEDGE, knowledge_batch=4, seed=0)(items)
            embs = model(batch)
            loss, _ = multimodal_loss(embs, batch["index"], batch["size"], model.scale())
            k = batch["knowledge"]
            loss = loss + clip_loss(model.encode("text", k["text"]), model.encode_gene_ids(k["gene_ids"]),
                                    model.scale())
            loss.backward()
            grad = model.encoders["text"].proj[1].weight.grad.clone()
            enc = encode_samples(model, items, batch_size=4, autocast=True, prefetch=True)
            genes = model.encode_genes(["G1", "G2", "unknown"])
        finally:
            if mode:
                mode.__exit__(None, None, None)
        assert not strict or mode.checked > 0
        return info, float(loss.detach()), grad, enc, genes

    info, loss, grad, enc, genes = run(True)
    info0, loss0, grad0, enc0, genes0 = run(False)
    assert info["steps"] == 4 and info["terms"] > 0 and info["init_projection"] == "pca"
    assert info["loss_first"] == info0["loss_first"] and info["loss_last"] == info0["loss_last"]
    assert loss == loss0 and torch.equal(grad, grad0) and torch.equal(genes, genes0)
    assert set(enc) == {"text", "image", "labs", "variants"}
    for m in enc:
        np.testing.assert_array_equal(enc[m][1], enc0[m][1])


def test_bf16_autocast_path_matches_float32_vectors():
    """The mixed-precision path a GPU takes (``autocast=True``; bf16 autocast on CPU) gives the float32
    vectors to bf16 tolerance; the default on CPU is plain float32 (bit-identical to no autocast)."""
    from raretarget.encoders.knowledge import align_knowledge
    from raretarget.encoders.training import encode_samples

    model = _tiny_model(terms=8)
    align_knowledge(model, KNOWLEDGE, steps=2, batch_size=4, max_terms=3, device="cpu", aliases=ALIASES)
    items = _items()
    f32 = encode_samples(model, items, batch_size=4, autocast=False)
    dflt = encode_samples(model, items, batch_size=4)
    bf16 = encode_samples(model, items, batch_size=4, autocast=True)
    for m in f32:
        np.testing.assert_array_equal(dflt[m][1], f32[m][1])
        np.testing.assert_array_equal(bf16[m][0], f32[m][0])
        cos = (bf16[m][1] * f32[m][1]).sum(1)
        assert bf16[m][1].dtype == np.float32 and cos.min() > 0.97, (m, cos.min())


def test_device_auto_resolution_and_load_model_default(tmp_path, monkeypatch):
    from raretarget.encoders.device import resolve_device, resolve_workers
    from raretarget.encoders.training import load_model, save_model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device(None) == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device("cuda:1") == torch.device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    model = _tiny_model(knowledge=False)
    save_model(model, tmp_path)
    m = load_model(tmp_path)                                      # default "auto": the CPU here
    assert next(m.parameters()).device.type == "cpu" and m.model_version == model.model_version
    cpus = len(__import__("os").sched_getaffinity(0))
    assert resolve_workers("auto") == max(0, min(4, cpus - 1)) and resolve_workers(3) == 3
    assert resolve_workers(None) == resolve_workers("auto") and resolve_workers(-1) == 0


# ---- the text path --------------------------------------------------------------------------------
TEXTS = ["", None, "Seizure", "Seizure", "naïve café – 漢字 [PAD] [CLS] x",
         "The child has recurrent seizures and developmental delay. " * 12,
         "Ataxia; ptosis\nHypotonia. Follow up in clinic.", "Ataxia; ptosis\nHypotonia. Follow up in clinic."]


@pytest.mark.parametrize("L", [4, 16, 128])
def test_batch_tokenizer_gives_the_transformers_ids(L):
    from raretarget.encoders.text import TextEncoder

    enc = TextEncoder(embed_dim=D, backbone="tiny")
    ref = enc.tokenizer([t or "" for t in TEXTS], padding=True, truncation=True, max_length=L, return_tensors="pt")
    for got in (enc.tokenize(TEXTS, L), enc.tokenize_unique(TEXTS, L)):
        assert got["input_ids"].dtype == torch.long and got["input_ids"].device.type == "cpu"
        assert torch.equal(got["input_ids"], ref["input_ids"]) and torch.equal(got["attention_mask"],
                                                                               ref["attention_mask"])


def test_length_sorted_deduplicated_forward_gives_the_same_features():
    """Distinct clauses sorted by length in calls of ``forward_tokens`` (with and without the cache) give
    the one-call features; repeated clauses get their first copy's features."""
    from raretarget.encoders.text import TextEncoder, mean_pool

    torch.manual_seed(0)
    enc = TextEncoder(embed_dim=D, backbone="tiny", cache_size=0, forward_tokens=40).eval()
    b = enc.collate(TEXTS)
    ids, mask = b["input_ids"], b["attention_mask"]
    with torch.no_grad():
        ref = mean_pool(enc.backbone(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
        got = enc._encode_rows(ids, mask)
        enc.cache_size = 1000
        cached = enc._encode_rows(ids, mask)
        again = enc._encode_rows(ids, mask)               # every row from the cache now
    assert got.shape == ref.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cached, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(cached, again)
    keys, _ = enc._row_bytes(ids, mask)
    for i, k in enumerate(keys):                          # duplicates: exactly their first copy
        assert torch.equal(got[i], got[keys.index(k)])


def test_clause_keys_unchanged():
    from raretarget.encoders.text import TextEncoder, token_key

    enc = TextEncoder(embed_dim=D, backbone="tiny")
    b = enc.collate(TEXTS)
    keys = enc.clause_keys(b["input_ids"], b["attention_mask"])
    for i, n in enumerate(b["attention_mask"].sum(1).tolist()):
        assert int(keys[i]) == token_key(b["input_ids"][i, :n].tolist())


# ---- training DataLoader workers ------------------------------------------------------------------
def test_one_worker_draws_the_batches_of_none():
    """``num_workers`` from config: with one worker (what ``auto`` gives on two cores) the training batches
    (random note subsets, image augmentation, knowledge pairs) are those of ``num_workers=0``."""
    from raretarget.encoders.datamodule import MultiModalDataModule

    def batches(w):
        torch.manual_seed(0)
        model = _tiny_model(knowledge=False)
        dm = MultiModalDataModule(synthetic=True, n_patients=24, n_groups=3, batch_size=8, num_workers=w,
                                  knowledge_batch=4)
        dm.prepare()
        dm.attach(model)
        torch.manual_seed(1)
        out = list(dm.train_dataloader())
        return dm, out

    dm1, b1 = batches(1)
    dm0, b0 = batches(0)
    assert dm1.num_workers == 1 and dm0.num_workers == 0 and len(b1) == len(b0) > 1
    for x, y in zip(b1, b0):
        assert x["patient_id"] == y["patient_id"]
        for m in y["inputs"]:
            for k in y["inputs"][m]:
                assert torch.equal(x["inputs"][m][k], y["inputs"][m][k]), (m, k)
        assert torch.equal(x["knowledge"]["gene_ids"], y["knowledge"]["gene_ids"])


# ---- GPU: the default configuration ---------------------------------------------------------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def gpu_world(tmp_path_factory):
    from raretarget import Engine
    from raretarget.cohort import generate

    tmp = tmp_path_factory.mktemp("gpu")
    generate(tmp / "cohort", n_patients=40, seed=3)
    eng = Engine.open(tmp / "store", create=True)
    eng.ingest([tmp / "cohort" / "fhir", tmp / "cohort" / "dicom", tmp / "cohort" / "vcf"])
    return eng


@pytest.mark.gpu
@needs_cuda
def test_default_training_on_gpu_with_the_knowledge_phase(gpu_world):
    """``eng.train()`` with the default config (MiniLM, knowledge phase on, term tables) on CUDA; only the
    epochs are cut."""
    s = gpu_world.train(max_epochs=2)
    assert s["device"].startswith("cuda") and s["precision"] in ("bf16-mixed", "16-mixed")
    k = s["knowledge"]
    assert k["steps"] > 0 and k["init_projection"] == "pca" and k["terms"] > 0
    assert math.isfinite(k["loss_last"]) and k["loss_last"] < k["loss_first"]
    assert all(math.isfinite(x) for x in s["train_loss"])


@pytest.mark.gpu
@needs_cuda
def test_default_embedding_on_gpu_matches_cpu(gpu_world):
    """``eng.embed()`` runs on CUDA by default (bf16 autocast) and gives the CPU vectors to bf16 tolerance."""
    from raretarget.index.generations import vectors_of

    eng = gpu_world
    if eng.current_model() is None:
        eng.train(max_epochs=1)
    version = eng.current_model()["model_version"]
    gens = eng._generations()
    cpu_counts = eng.embed(device="cpu")
    cpu = {m: gens.read_embeddings(version, m) for m in cpu_counts}
    counts = eng.embed()                                  # device "auto": CUDA here
    assert counts == cpu_counts and counts["note"] > 0 and counts["gene"] > 0
    for m in counts:
        t = gens.read_embeddings(version, m)
        assert t.column("record_id").to_pylist() == cpu[m].column("record_id").to_pylist()
        a, b = vectors_of(t), vectors_of(cpu[m])
        cos = (a * b).sum(1)
        assert cos.min() > 0.98, (m, float(cos.min()))


# ---- variant collation (vectorised) ---------------------------------------------------------------
def _reference_variant_collate(enc, values):
    """The per-element collation the vectorised one replaced."""
    from raretarget.encoders.variants import variant_priority

    lists = [sorted(v or [], key=variant_priority)[: enc.max_variants] for v in values]
    V, B = max([len(x) for x in lists] + [1]), len(lists)
    out = {k: torch.zeros(B, V, dtype=torch.long) for k in ("gene", *enc.vocab)}
    af, mask = torch.zeros(B, V, 2), torch.zeros(B, V, dtype=torch.bool)
    for i, vs in enumerate(lists):
        for j, v in enumerate(vs):
            out["gene"][i, j] = int(enc.gene_ids([v.get("gene")])[0])
            for k in enc.vocab:
                out[k][i, j] = enc._attr(k, v.get(k))
            a = v.get("af")
            if a is None or not (a == a):
                af[i, j, 1] = 1.0
            else:
                af[i, j, 0] = -math.log10(max(float(a), 1e-6)) / 6.0
            mask[i, j] = True
    return {**out, "af": af, "mask": mask}


def test_vectorised_variant_collate_matches_the_per_element_one():
    import random

    from raretarget.encoders.variants import VariantEncoder

    rng = random.Random(1)
    genes = [f"G{i}" for i in range(50)]
    enc = VariantEncoder(embed_dim=8, genes=genes, dim=8, max_variants=12)
    choices = {"gene": genes[:5] + ["UNKNOWN1", None, ""], "consequence": ["missense_variant", "Stop_Gained", "odd", None],
               "impact": ["high", "LOW", None, "x"], "clinvar": ["Pathogenic", None, "benign", "odd"],
               "zygosity": ["het", "HOM_ALT", None], "af": [None, float("nan"), 0.0, 1e-9, 0.3, 1]}

    def variant():
        return {k: rng.choice(v) for k, v in choices.items() if rng.random() < 0.9}

    batches = [[None if rng.random() < 0.1 else [variant() for _ in range(rng.randint(0, 20))] for _ in range(9)]
               for _ in range(10)] + [[None, []], []]
    for b in batches:
        got, ref = enc.collate(b), _reference_variant_collate(enc, b)
        assert got.keys() == ref.keys()
        for k in ref:
            assert got[k].dtype == ref[k].dtype and torch.equal(got[k], ref[k]), k
