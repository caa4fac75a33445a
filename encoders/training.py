"""Training entry points (no hydra inside): ``train(cfg) -> dict``, ``load_model(folder)``,
``embed(model, store, out)`` and ``retrieval_recall(model, samples)``.

Config (dict or ``DictConfig``; missing keys take :data:`DEFAULTS`)::

    encoders: {text: {name: text, ...}, image: {...}, labs: {...}, variants: {...}}   # or _target_
    model:    {embed_dim, logit_scale_init, logit_scale_max, knowledge_weight, optimizer, scheduler,
               knowledge: {steps, batch_size, lr, max_terms, ...}}   # knowledge alignment phase
    data:     MultiModalDataModule kwargs (store: path | synthetic: true, batch_size, ...)
    trainer:  lightning.Trainer kwargs (precision "auto": bf16/16-mixed on GPU, 32 on CPU)
    out_dir, seed, fit_lab_stats, eval_untrained, eval_batch_size, eval_patients

Output folder: ``model.safetensors`` (all weights), ``config.json`` (architecture incl. the gene
vocabulary and lab panel, the training config, ``model_version``), ``metrics.json``.
``model_version`` = first 16 hex digits of SHA-256 over the architecture config (canonical JSON)
and every tensor (name, dtype, shape, bytes) in name order.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

FORMAT = 4
# Architecture keys added by each format. A checkpoint of an older format has none of the later keys in
# its config, and its model_version hashed the config without them: loading one rebuilds it as it was
# (format 1: ``pooling="mean"``, ``feature_dim=0``; format 2: ``terms=0``, ``term_path=False``; format 3:
# ``term_aliases=0``; the defaults of the later keys) and checks the hash over the config as it was then.
_NEW_KEYS = {2: {"text": ("pooling", "segment_length", "max_segments"), "variants": ("feature_dim",)},
             3: {"text": ("terms",), "variants": ("term_path",)},
             4: {"text": ("term_aliases",)}}

def default_config() -> dict[str, Any]:
    """The training defaults: ``conf/train.yaml`` composed as ``python scripts/train.py data=store trainer=auto``
    (:func:`raretarget.config.compose`; the YAML is the one source), ``data.store`` ``None`` until given,
    interpolations (``encoders.*.embed_dim: ${model.embed_dim}``) resolved. A fresh dict per call; the files are
    read once."""
    from raretarget.config import resolve

    return resolve(_composed_defaults())


@functools.lru_cache(maxsize=1)
def _composed_defaults() -> dict[str, Any]:
    from raretarget.config import compose

    c = compose("train", {"data": "store", "trainer": "auto"}, resolve=False)
    if c["data"].get("store") == "???":
        c["data"]["store"] = None
    return c


def __getattr__(name: str) -> Any:
    # ``DEFAULTS`` stays importable, composed lazily from the packaged YAML (no file is read at import)
    if name == "DEFAULTS":
        return default_config()
    raise AttributeError(name)


# ---- config helpers -------------------------------------------------------------------------------
def _to_dict(cfg: Any) -> dict:
    if cfg is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    return copy.deepcopy(dict(cfg))


def _merge(base: dict, over: Mapping) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def resolve_config(cfg: Any = None, **overrides: Any) -> dict:
    """DEFAULTS ← cfg ← overrides. Override keys may be dotted (``"trainer.max_epochs": 3``).
    ``encoders`` given in ``cfg`` replace the default set (so a config can drop a modality)."""
    c = _to_dict(cfg)
    from raretarget.config import resolve

    base = copy.deepcopy(_composed_defaults())       # unresolved: a caller's model.embed_dim reaches the encoders
    if "encoders" in c:
        base["encoders"] = {}
    out = _merge(base, c)
    for key, v in overrides.items():
        if isinstance(v, Mapping) and key in out and isinstance(out[key], dict):
            out[key] = _merge(out[key], v)
            continue
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = copy.deepcopy(v)
    return resolve(out)


def _trainer_kwargs(tcfg: Mapping[str, Any]) -> dict:
    import torch

    t = dict(tcfg)
    cuda = torch.cuda.is_available() and t.get("accelerator", "auto") in ("auto", "gpu", "cuda")
    if t.get("precision", "auto") == "auto":
        t["precision"] = ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed") if cuda else "32-true"
    if not cuda and str(t.get("precision")).startswith(("16", "bf16")) and t.get("accelerator") in ("auto", "cpu"):
        t["precision"] = "32-true"
    if not cuda and t.get("strategy") in ("ddp", "ddp_find_unused_parameters_true"):
        t["strategy"] = "auto"
    return t


# ---- versioning / checkpoint ----------------------------------------------------------------------
def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


def model_version(model, arch: Mapping | None = None) -> str:
    """SHA-256 (16 hex) over the architecture config (``arch``, default the model's) and every tensor
    of the state dict."""
    import torch

    h = hashlib.sha256(_canonical(arch if arch is not None else _arch(model)))
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _arch(model) -> dict:
    c = model.config()
    c = copy.deepcopy(c)
    c.pop("logit_scale_init", None)  # the learned value lives in the weights
    return c


def save_model(model, out_dir: str | os.PathLike, train_cfg: Mapping | None = None,
               metrics: Mapping | None = None) -> str:
    """Write ``model.safetensors`` + ``config.json`` (+ ``metrics.json``); returns the model_version."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    version = model_version(model)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"model_version": version, "format": str(FORMAT)})
    cfg = {"format": FORMAT, "model_version": version, "model": _arch(model), "train": train_cfg or {}}
    (out / "config.json").write_text(json.dumps(cfg, indent=1, default=str))
    if metrics is not None:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str))
    model.model_version = version
    return version


def load_model(folder: str | os.PathLike, device: Any = "auto"):
    """Rebuild the :class:`MultiModalModel` saved in ``folder`` (eval mode) with ``.model_version``, on
    ``device`` (``"auto"``: CUDA when present, else CPU; see :func:`.device.resolve_device`).

    Raises ``ValueError`` when the weights do not hash to the recorded model_version."""
    from safetensors.torch import load_file

    from .device import resolve_device
    from .model import MultiModalModel

    device = resolve_device(device)

    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    arch = cfg["model"]
    fmt = int(cfg.get("format", FORMAT))
    legacy = fmt < FORMAT
    if fmt < 2:
        for e in arch["encoders"].values():
            if e.get("name") == "text":
                e.setdefault("pooling", "mean")
    model = MultiModalModel(arch["encoders"], arch["embed_dim"], logit_scale_max=arch.get("logit_scale_max", 100.0))
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    model.eval().to(device)
    if legacy:
        old = _arch(model)
        for e in old["encoders"].values():
            for f, keys in _NEW_KEYS.items():
                if f > fmt:
                    for k in keys.get(e.get("name"), ()):
                        e.pop(k, None)
        v = model_version(model, old)
    else:
        v = model_version(model)
    if v != cfg["model_version"]:
        raise ValueError(f"{folder}: weights hash to {v}, config says {cfg['model_version']}")
    model.model_version = v
    model.train_config = cfg.get("train", {})
    return model


# ---- evaluation / embedding -----------------------------------------------------------------------
def _unwrap(model):
    return getattr(model, "model", model) if not hasattr(model, "encoders") else model


def _prefetched(fn, args, depth: int = 2):
    """``fn(a)`` for each of ``args``, in order, computed up to ``depth`` ahead in one background thread:
    collation (tokenisation, image transforms, variant tables; the Rust tokenizer releases the GIL) then
    overlaps the device's forward pass of the previous batch."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    it = iter(args)
    with ThreadPoolExecutor(1, thread_name_prefix="raretarget-collate") as ex:
        q = deque(ex.submit(fn, a) for _, a in zip(range(depth), it))
        while q:
            f = q.popleft()
            for a in it:                  # keep the queue full: at most one new task per result taken
                q.append(ex.submit(fn, a))
                break
            yield f.result()


def encode_samples(model, items: Sequence[dict], batch_size: int = 128, *, autocast: bool | None = None,
                   prefetch: bool | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Model inputs (see ``PatientDataset``) -> ``{modality: (positions (n,), vectors (n, D) float32)}``.

    Runs on the model's device. ``autocast``: bf16 mixed precision (None: on CUDA only, so CPU vectors
    are plain float32); ``prefetch``: collate the next batches in a background thread into pinned memory
    (None: on CUDA only). Neither changes which vectors come out beyond bf16 rounding."""
    import torch

    from .device import inference_autocast, to_device

    model = _unwrap(model)
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    cuda = dev.type == "cuda"
    prefetch = cuda if prefetch is None else bool(prefetch)

    def prep(start: int):
        b = model.collate(items[start:start + batch_size], train=False)
        if cuda and prefetch:            # page-locked in the background: the upload below is asynchronous
            b["inputs"] = _pinned(b["inputs"])
        return start, b

    starts = range(0, len(items), batch_size)
    out: dict[str, tuple[list, list]] = {}
    try:
        with torch.no_grad():
            batches = _prefetched(prep, starts) if prefetch else map(prep, starts)
            for start, b in batches:
                with inference_autocast(dev, autocast):
                    embs = model({"inputs": to_device(b["inputs"], dev)})
                for m, e in embs.items():
                    pos, vec = out.setdefault(m, ([], []))
                    pos.append(b["index"][m].numpy() + start)
                    vec.append(e.float().cpu().numpy())
    finally:
        model.train(was)
    return {m: (np.concatenate(p), np.concatenate(v).astype(np.float32)) for m, (p, v) in out.items()}


def _pinned(x):
    import torch

    if isinstance(x, torch.Tensor):
        return x.pin_memory() if x.device.type == "cpu" else x
    if isinstance(x, dict):
        return {k: _pinned(v) for k, v in x.items()}
    return x


def retrieval_recall(model, samples: Sequence[dict], batch_size: int = 128, max_note_chars: int = 2000) -> dict:
    """Cross-modal retrieval among ``samples`` (patient samples, e.g. the held-out split).

    For each ordered modality pair (a → b): every patient with both is a query in ``a``; candidates are
    all patients' ``b`` vectors. ``recall@1`` = top-1 is the same patient; ``group_recall@1``
    (synthetic) = top-1 has the same latent group. Returns ``{"recall@1": mean over pairs,
    "group_recall@1": ..., "pairs": {"a->b": {"recall@1", "group_recall@1", "n"}}}``.
    """
    from .data import PatientDataset

    items = [PatientDataset(samples, False, max_note_chars)[i] for i in range(len(samples))]
    enc = encode_samples(model, items, batch_size)
    groups = np.asarray([it.get("group", -1) for it in items])
    has_groups = bool(len(items)) and all("group" in it for it in items)
    pairs, r1, g1 = {}, [], []
    for a in enc:
        for b in enc:
            if a == b:
                continue
            pa, va = enc[a]
            pb, vb = enc[b]
            common = np.isin(pa, pb)
            if common.sum() < 2:
                continue
            top = (va[common] @ vb.T).argmax(1)
            hit = pb[top] == pa[common]
            pairs[f"{a}->{b}"] = {"recall@1": float(hit.mean()), "n": int(common.sum()), "candidates": int(len(pb))}
            r1.append(hit.mean())
            if has_groups:
                ghit = groups[pb[top]] == groups[pa[common]]
                pairs[f"{a}->{b}"]["group_recall@1"] = float(ghit.mean())
                g1.append(ghit.mean())
    return {"recall@1": float(np.mean(r1)) if r1 else float("nan"),
            "group_recall@1": float(np.mean(g1)) if g1 else None, "pairs": pairs}


def embedding_table(record_ids: Sequence[int], patient_ids: Sequence[str | None], modality: str,
                    vectors: np.ndarray, version: str):
    """Arrow table in the one EMBEDDINGS schema (:func:`raretarget.store.schema.embeddings_schema`): record_id
    int64, patient_id string, modality string, source_ref string (null here: the store path fills it),
    model_version string, vector fixed_size_list<float32>[D]."""
    import pyarrow as pa

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape if vectors.ndim == 2 else (0, 0)
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    return pa.Table.from_arrays([
        pa.array(list(record_ids), pa.int64()), pa.array(list(patient_ids), pa.string()),
        pa.array([modality] * n, pa.string()), pa.nulls(n, pa.string()), pa.array([version] * n, pa.string()),
        pa.FixedSizeListArray.from_arrays(flat, d)], schema=embedding_schema(d))


def embedding_schema(dim: int):
    """The EMBEDDINGS schema with vectors of width ``dim`` (defined once, in the store's schema module)."""
    from raretarget.store.schema import embeddings_schema

    return embeddings_schema(dim)


def embed(model, store: Any = None, out: str | os.PathLike | None = None, *, samples: Sequence[dict] | None = None,
          modalities: Sequence[str] | None = None, batch_size: int = 128, genes: bool = True,
          max_note_chars: int = 2000, device: Any = None, autocast: bool | None = None) -> dict:
    """Embed every patient of ``store`` (path or ``Engine``; or given ``samples``) per modality.

    ``record_id``: for ``image`` the image row's ``images.record_id`` (every thumbnail is embedded);
    for ``text``, ``labs``, ``variants`` the patient's ``patients.record_id`` (or a stable hash when the
    patient has no Patient resource). With ``genes=True`` a ``gene`` table holds the gene vocabulary
    (``record_id`` = ``record_ids("genes", [symbol])``, ``patient_id`` null). ``model`` is a
    ``MultiModalModel``, a ``ContrastiveModule`` or a saved folder. Writes ``<out>/<modality>.parquet``
    when ``out`` is given. Returns ``{modality: pyarrow.Table}`` (see :func:`embedding_table`).

    ``device``: where to run (``"auto"``: CUDA when present); None = where the model is (a folder is
    loaded with ``"auto"``). A model object given with a device is moved there. ``autocast``: see
    :func:`encode_samples` (bf16 on CUDA by default; CPU vectors are float32 as before).
    """
    import pyarrow.parquet as pq

    from raretarget.store.schema import record_ids

    from .data import PatientDataset, load_store_samples
    from .device import inference_autocast, resolve_device

    if isinstance(model, (str, os.PathLike)):
        model = load_model(model, device="auto" if device is None else device)
    model = _unwrap(model)
    if device is not None:
        model.to(resolve_device(device))
    version = model.model_version or model_version(model)
    if samples is None:
        samples = load_store_samples(store)
    mods = [m for m in (modalities or model.modalities) if m in model.encoders]
    ds = PatientDataset(samples, False, max_note_chars)
    tables = {}
    for m in mods:
        items, rids, pids = [], [], []
        for i, s in enumerate(samples):
            it = ds[i]
            if m == "image":
                for rid, th in s.get("images") or []:
                    items.append({m: th})
                    rids.append(int(rid))
                    pids.append(s["patient_id"])
            elif it.get(m) is not None:
                items.append({m: it[m]})
                rids.append(int(s["record_id"]))
                pids.append(s["patient_id"])
        enc = encode_samples(model, items, batch_size, autocast=autocast).get(m)
        vec = enc[1] if enc is not None else np.zeros((0, model.embed_dim), np.float32)
        tables[m] = embedding_table(rids, pids, m, vec, version)
    if genes and "variants" in model.encoders:
        syms = list(model.encoders["variants"].genes)
        with inference_autocast(model._device(), autocast):
            vecs = [model.encode_genes(syms[i:i + 4096]).float().cpu().numpy() for i in range(0, len(syms), 4096)]
        vec = np.concatenate(vecs) if vecs else np.zeros((0, model.embed_dim), np.float32)
        tables["gene"] = embedding_table(record_ids("genes", syms).tolist(), [None] * len(syms), "gene", vec, version)
    if out is not None:
        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        for m, t in tables.items():
            pq.write_table(t, o / f"{m}.parquet")
    return tables


# ---- training -------------------------------------------------------------------------------------
def _history_callback():
    import lightning as L

    class History(L.Callback):
        def __init__(self):
            self.train_loss, self.val_loss, self.first_batch_loss = [], [], None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self.first_batch_loss is None and outputs is not None:
                loss = outputs["loss"] if isinstance(outputs, dict) else outputs
                self.first_batch_loss = float(loss)

        def on_train_epoch_end(self, trainer, pl_module):
            v = trainer.callback_metrics.get("train_loss_epoch")
            if v is not None:
                self.train_loss.append(float(v))

        def on_validation_epoch_end(self, trainer, pl_module):
            v = trainer.callback_metrics.get("val_loss")
            if v is not None and not trainer.sanity_checking:
                self.val_loss.append(float(v))

    return History()


def _text_width(tcfg: Mapping[str, Any] | None) -> int:
    """Hidden size of the text tower a config builds (0 without one), read without loading weights."""
    if not tcfg:
        return 0
    backbone = tcfg.get("backbone", "minilm")
    if backbone == "tiny":
        return int(tcfg.get("tiny_hidden", 32))
    from .text import minilm_path

    folder = minilm_path() if backbone == "minilm" else Path(backbone)
    return int(json.loads((folder / "config.json").read_text())["hidden_size"])


def _n_terms(dm, c: Mapping[str, Any]) -> tuple[int, int]:
    """``(rows, alias slots)`` for ``encoders.text.terms`` / ``term_aliases: auto``: the distinct term labels
    of the knowledge genes in the vocabulary and their synonyms, or 0s when the knowledge phase will not
    run (no knowledge, ``steps <= 0``, 0 epochs)."""
    from .knowledge import DEFAULTS as KDEF

    steps = (c["model"].get("knowledge") or {}).get("steps", KDEF["steps"])
    knowledge = getattr(dm, "knowledge", None) if getattr(dm, "use_knowledge", True) else None
    if not knowledge or int(steps) <= 0 or c["trainer"].get("max_epochs", 1) == 0:
        return 0, 0
    vocab = set(dm.gene_vocabulary())
    labels = {t for g, v in knowledge.items() if g in vocab for t in v if t}
    aliases = getattr(dm, "aliases", None) or {}
    return len(labels), sum(len(aliases.get(t, ())) for t in labels)


def _knowledge_phase(model, dm, kcfg: Mapping[str, Any], tk: Mapping[str, Any], seed: int) -> dict | None:
    """The knowledge alignment phase (:func:`.knowledge.align_knowledge`) before the patient-level fit.

    Runs when ``model.knowledge.steps > 0``, ``trainer.max_epochs != 0`` (0 = an untrained model), the
    model has ``text`` + ``variants`` with a frozen text backbone, and the data module has knowledge
    (``data.knowledge``); the store's expert verdicts (``data.verdicts``) join it as profile ↔ gene pairs.
    On a GPU when the trainer would use one; the model is back on CPU after."""
    import torch

    from .knowledge import DEFAULTS as KDEF
    from .knowledge import align_knowledge, backbone_frozen

    k = {**KDEF, **{key: v for key, v in kcfg.items() if key in KDEF}}
    if int(k["steps"]) <= 0 or tk.get("max_epochs", 1) == 0:
        return None
    knowledge = getattr(dm, "knowledge", None) if getattr(dm, "use_knowledge", True) else None
    if not knowledge or not {"text", "variants"} <= set(model.encoders) or not backbone_frozen(model):
        return None
    cuda = torch.cuda.is_available() and tk.get("accelerator", "auto") in ("auto", "gpu", "cuda")
    k["seed"] = int(kcfg.get("seed", seed))
    try:
        return align_knowledge(model, knowledge, device="cuda" if cuda else "cpu",
                               aliases=getattr(dm, "aliases", None), verdicts=getattr(dm, "verdicts", None), **k)
    finally:
        model.cpu()


def train(cfg: Any = None, *, store: Any = None, out_dir: str | os.PathLike | None = None, **overrides: Any) -> dict:
    """Train the shared-space model contrastively; save it; return a summary dict.

    ``cfg``: dict / DictConfig (see module doc); ``store``: path or ``Engine`` (sets ``data.store``);
    ``out_dir``; ``overrides``: dotted keys (``**{"trainer.max_epochs": 2}``) or section dicts.
    Returns ``{"out_dir", "model_version", "train_loss" (per epoch), "val_loss" (per epoch),
    "first_batch_loss", "recall" / "recall_untrained" (:func:`retrieval_recall` on the held-out split),
    "n_train", "n_val", "seconds", "precision", "device"}``.
    """
    import lightning as L
    import torch

    from .datamodule import MultiModalDataModule
    from .module import ContrastiveModule

    t0 = time.time()
    c = resolve_config(cfg, **overrides)
    if store is not None:
        c["data"]["store"], c["data"]["synthetic"] = store, False
    if out_dir is not None:
        c["out_dir"] = str(out_dir)
    L.seed_everything(int(c.get("seed", 0)), workers=True, verbose=False)
    dcfg = dict(c["data"])
    if not dcfg.get("synthetic"):
        dcfg.pop("synthetic", None)
        if dcfg.get("store") in (None, "???", ""):
            raise ValueError("data.store is not set (or use data.synthetic=true)")
    else:
        dcfg.pop("store", None)
    dm = MultiModalDataModule(**dcfg)
    dm.prepare()
    times = {"prepare": time.time() - t0}
    enc_cfg = copy.deepcopy(c["encoders"])
    for m, e in enc_cfg.items():
        if e.get("name") == "variants" or str(e.get("_target_", "")).endswith("VariantEncoder"):
            if e.get("genes", "auto") in ("auto", None):
                e["genes"] = dm.gene_vocabulary()
            if e.get("feature_dim") == "auto":
                e["feature_dim"] = _text_width(enc_cfg.get("text"))
    n_terms, n_aliases = _n_terms(dm, c)
    for m, e in enc_cfg.items():
        if e.get("name") == "text" or str(e.get("_target_", "")).endswith("TextEncoder"):
            if e.get("terms") == "auto":
                e["terms"] = n_terms if e.get("pooling", "segments") == "segments" else 0
            n_terms = int(e.get("terms") or 0)
            if e.get("term_aliases") == "auto":
                e["term_aliases"] = n_aliases if n_terms else 0
    for m, e in enc_cfg.items():
        if e.get("name") == "variants" or str(e.get("_target_", "")).endswith("VariantEncoder"):
            if e.get("term_path") == "auto":
                e["term_path"] = n_terms > 0
    mcfg = dict(c["model"])
    kcfg = dict(mcfg.pop("knowledge", None) or {})
    module = ContrastiveModule(enc_cfg, **mcfg)
    model = module.model
    if c.get("fit_lab_stats", True) and "labs" in model.encoders:
        dm.fit_lab_stats(model.encoders["labs"])
    dm.attach(model)
    ebs = int(c.get("eval_batch_size", 128))
    tb = time.time()
    times["build"] = tb - t0 - times["prepare"]
    # held-out recall on at most eval_patients patients: their samples, not the store's, are held at once
    limit = c.get("eval_patients")
    limit = None if limit is None else int(limit)
    before = None
    if c.get("eval_untrained", True) and dm.n_val:
        val = dm.eval_samples(limit)                # read again after the fit rather than held through it
        before = retrieval_recall(model, val, ebs) if val else None
        del val
    times["eval_untrained"] = time.time() - tb
    tk = _trainer_kwargs(c["trainer"])
    tb = time.time()
    kinfo = _knowledge_phase(model, dm, kcfg, tk, int(c.get("seed", 0)))
    if kinfo is not None:
        times["knowledge"] = time.time() - tb
    hist = _history_callback()
    targs = dict(logger=False, enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                 default_root_dir=c["out_dir"])
    targs.update(tk)
    trainer = L.Trainer(**targs, callbacks=[hist])
    tb = time.time()
    trainer.fit(module, datamodule=dm)
    times["fit"] = time.time() - tb
    model.cpu().eval()
    tb = time.time()
    val = dm.eval_samples(limit) if dm.n_val else []
    after = retrieval_recall(model, val, ebs) if val else None
    del val
    times["eval"] = time.time() - tb
    result = {"out_dir": str(Path(c["out_dir"]).resolve()), "train_loss": hist.train_loss, "val_loss": hist.val_loss,
              "first_batch_loss": hist.first_batch_loss, "recall": after, "recall_untrained": before,
              "n_train": dm.n_train, "n_val": dm.n_val, "precision": str(tk["precision"]),
              "device": str(trainer.strategy.root_device), "logit_scale": float(model.scale().detach())}
    if kinfo is not None:
        result["knowledge"] = kinfo
    if trainer.is_global_zero:
        result["model_version"] = save_model(model, c["out_dir"], train_cfg=_jsonable(c), metrics=None)
    result["seconds"] = round(time.time() - t0, 2)
    result["timings"] = {k: round(v, 2) for k, v in times.items()}
    if trainer.is_global_zero:
        (Path(c["out_dir"]) / "metrics.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def _jsonable(c: dict) -> dict:
    # the store is replaced by its path before the copy: an Engine holds locks and caches that do not copy
    data = dict(c.get("data") or {})
    st = data.get("store")
    if st is not None and not isinstance(st, (str, os.PathLike)):
        root = getattr(getattr(st, "store", st), "root", None)     # an Engine (.store.root) or a Store (.root)
        data["store"] = str(root if root is not None else st)
    elif st is not None:
        data["store"] = str(st)
    c = dict(c)
    if "data" in c:
        c["data"] = data
    return copy.deepcopy(c)
