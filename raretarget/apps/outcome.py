"""Outcome prediction from the stored patient embeddings: how much does each modality (and their fusion)
tell about a patient-level target?

``predict_outcome(engine, target)`` builds one label per embedded patient, one feature matrix per
modality of the current model's embeddings, fits an L2-regularised logistic regression on a training
part and reports AUROC / accuracy on held-out patients::

    {"target", "n_train", "n_test", "positives", "split", "model_version",
     "results": {"note": {...}, "image": {...}, "labs": {...}, "variants": {...},
                 "fused": {...}, "patient": {...}}}

Each result holds ``auroc`` (Mann–Whitney, ties count 0.5), ``accuracy`` (threshold 0.5 on the
class-balanced model), ``balanced_accuracy``, ``n_test_with_modality``, ``coverage`` (share of test
patients that have the modality), ``positives_test`` and the chosen ``l2``; ``auroc``/``accuracy``
are None (with a ``note``) where a modality's training or test patients hold one class only.

Targets
-------
``HP:nnnnnnn``    positive = the patient has a condition whose ``hpo_id`` is the term or a descendant
                  (ancestors walked with the packaged hp.obo ``is_a`` parents; obsolete ids replaced).
``SNOMED:<code>`` / ``<code>``   positive = a condition with ``conditions.code = <code>``.
``sql:<predicate>``              positive = a condition row matching the SQL predicate over ``conditions``.
``labels={patient_id: 0/1}``     explicit labels (then ``target`` is only a name); patients without a
                                 label are left out.

Features
--------
Per modality (note, image, labs, variants): the mean of the patient's vectors of that modality (one
vector per patient except images: mean over the patient's images). ``fused``: concatenation of the
modalities (standardised on the training patients that have it, missing ones zero-filled = the
training mean) plus one missing-indicator per modality. ``patient``: the stored fused patient vector.
A single modality is trained and evaluated only on the patients that have it.

Split
-----
The encoders' validation split (:func:`raretarget.encoders.data.is_val` with the current model's
``data.val_fraction`` / ``data.split_seed``): those patients were never seen by the contrastive
training, so they are the honest test set. It is used when it holds at least
``MIN_VAL_SHARE`` of the labelled patients (the configured fraction is 0.2; the realised hash share
fluctuates around it) and both classes among test and training patients; otherwise a deterministic
stratified 70/30 split by a BLAKE2b hash of ``(seed, patient_id)``. ``split`` says which was used.

Classifier
----------
Features standardised on the training part; logistic regression with class-balanced weights and an
L2 penalty ``l2/2 * ||w||²`` (intercept unpenalised) fitted with L-BFGS (scipy). ``l2`` is chosen from
:data:`L2_GRID` by stratified k-fold cross-validation on the training part only (k = min(5, minority
class count)), maximising the pooled out-of-fold AUROC (ties → stronger penalty).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.optimize import minimize
from scipy.stats import rankdata

from raretarget.vocab.modalities import RECORD_MODALITIES

__all__ = ["predict_outcome", "evaluate_features", "auroc", "fit_logistic", "choose_l2", "target_labels",
           "patient_features", "MODALITIES", "L2_GRID"]

MODALITIES = RECORD_MODALITIES            # the one set: raretarget.vocab.modalities
L2_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
MIN_PATIENTS = 10
MIN_VAL_SHARE = 0.15


# ---- metrics ---------------------------------------------------------------------------------------
def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve by the Mann–Whitney U statistic (tied scores count 0.5).
    Raises ValueError when one class is absent."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        raise ValueError("AUROC needs both classes")
    r = rankdata(s)                                     # average ranks: a tie gives each side 0.5
    u = r[y].sum() - n1 * (n1 + 1) / 2.0
    return float(u / (n1 * n0))


# ---- classifier ------------------------------------------------------------------------------------
def _balanced_weights(y: np.ndarray) -> np.ndarray:
    n, n1 = len(y), int(y.sum())
    n0 = n - n1
    w = np.where(y > 0, n / (2.0 * max(n1, 1)), n / (2.0 * max(n0, 1)))
    return w / w.mean()


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float, w0: np.ndarray | None = None,
                 balanced: bool = True) -> np.ndarray:
    """L2-regularised logistic regression; returns ``[w..., b]``. Loss = weighted mean log-loss +
    ``l2/2 ||w||²`` (intercept not penalised)."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, d = X.shape
    sw = _balanced_weights(y) if balanced else np.ones(n)
    sw = sw / n

    def f(theta):
        w, b = theta[:d], theta[d]
        z = X @ w + b
        loss = np.sum(sw * (np.logaddexp(0.0, z) - y * z)) + 0.5 * l2 * (w @ w)
        g = sw * (0.5 * (1.0 + np.tanh(0.5 * z)) - y)   # numerically safe sigmoid
        grad = np.empty(d + 1)
        grad[:d] = X.T @ g + l2 * w
        grad[d] = g.sum()
        return loss, grad

    x0 = np.zeros(d + 1) if w0 is None else np.asarray(w0, dtype=np.float64)
    res = minimize(f, x0, jac=True, method="L-BFGS-B", options={"maxiter": 500, "gtol": 1e-6})
    return res.x


def _decision(X: np.ndarray, theta: np.ndarray) -> np.ndarray:
    return np.asarray(X, dtype=np.float64) @ theta[:-1] + theta[-1]


def _stratified_folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([int(seed), 7919])
    fold = np.empty(len(y), dtype=np.int64)
    for c in (0, 1):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        fold[idx] = np.arange(len(idx)) % k
    return fold


def choose_l2(X: np.ndarray, y: np.ndarray, grid: Sequence[float] = L2_GRID, k: int = 5,
              seed: int = 0) -> tuple[float, dict[float, float]]:
    """Pick ``l2`` by stratified k-fold CV on (X, y) (the training part only): pooled out-of-fold
    AUROC, ties broken towards the stronger penalty. Returns (l2, {l2: cv auroc})."""
    y = np.asarray(y).astype(np.int64)
    k = int(min(k, y.sum(), len(y) - y.sum()))
    if k < 2:
        return 1.0, {}
    fold = _stratified_folds(y, k, seed)
    scores: dict[float, float] = {}
    for l2 in sorted(grid, reverse=True):
        oof = np.empty(len(y))
        for f in range(k):
            tr, te = fold != f, fold == f
            theta = fit_logistic(X[tr], y[tr], l2)
            oof[te] = _decision(X[te], theta)
        # folds are scored on one pooled ranking: standardise each fold's scores to make them comparable
        for f in range(k):
            m = fold == f
            sd = oof[m].std()
            oof[m] = (oof[m] - oof[m].mean()) / (sd if sd > 0 else 1.0)
        scores[float(l2)] = auroc(oof, y)
    best = max(scores.items(), key=lambda kv: (round(kv[1], 12), kv[0]))[0]
    return best, scores


# ---- evaluation on feature matrices ----------------------------------------------------------------
def _standardize(X: np.ndarray, train: np.ndarray) -> np.ndarray:
    mu = X[train].mean(axis=0)
    sd = X[train].std(axis=0)
    sd[sd < 1e-8] = 1.0
    return (X - mu) / sd


def _fit_eval(X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int) -> dict:
    """Fit on ``train`` rows (inner CV picks l2), evaluate on ``test`` rows; X already aligned."""
    out: dict[str, Any] = {"n_train_with_modality": int(train.sum()), "n_test_with_modality": int(test.sum()),
                           "positives_test": int(y[test].sum()), "auroc": None, "accuracy": None,
                           "balanced_accuracy": None, "l2": None}
    ytr, yte = y[train], y[test]
    if train.sum() == 0 or ytr.min() == ytr.max():
        out["note"] = "training patients with this modality hold one class only"
        return out
    if test.sum() == 0:
        out["note"] = "no test patient has this modality"
        return out
    Xs = _standardize(X, train)
    l2, cv = choose_l2(Xs[train], ytr, seed=seed)
    theta = fit_logistic(Xs[train], ytr, l2)
    s = _decision(Xs[test], theta)
    pred = (s > 0).astype(np.int64)
    out["l2"] = l2
    out["cv_auroc"] = cv.get(l2)
    out["accuracy"] = float((pred == yte).mean())
    if yte.min() == yte.max():
        out["note"] = "test patients with this modality hold one class only"
        return out
    out["auroc"] = auroc(s, yte)
    out["balanced_accuracy"] = float(0.5 * ((pred[yte == 1] == 1).mean() + (pred[yte == 0] == 0).mean()))
    return out


def evaluate_features(features: Mapping[str, np.ndarray], y: Sequence[int], test: Sequence[bool], *,
                      fuse: bool = True, seed: int = 0) -> dict[str, dict]:
    """Per feature set: fit on the non-test rows, evaluate on the test rows.

    ``features``: name → (n, d) array aligned with ``y``; a patient lacking a modality has an all-NaN
    row. The name ``patient`` is the stored fused vector and is not part of ``fused``. With ``fuse``,
    adds ``fused``: the other modalities standardised (training rows that have them), missing ones
    zero-filled, concatenated with one missing-indicator column per modality.
    """
    y = np.asarray(y).astype(np.int64)
    test = np.asarray(test, dtype=bool)
    n_test = int(test.sum())
    results: dict[str, dict] = {}
    blocks, indicators = [], []
    for name, X in features.items():
        X = np.asarray(X, dtype=np.float64)
        if X.shape[0] != len(y):
            raise ValueError(f"feature set {name!r} has {X.shape[0]} rows for {len(y)} labels")
        has = ~np.isnan(X).any(axis=1)
        r = _fit_eval(X[has], y[has], ~test[has], test[has], seed)
        r["coverage"] = (r["n_test_with_modality"] / n_test) if n_test else 0.0
        results[name] = r
        if fuse and name != "patient":
            Z = np.zeros_like(X)
            tr = has & ~test
            if tr.any():
                Z[has] = _standardize(X[has], tr[has])
            Z[~has] = 0.0
            blocks.append(Z)
            indicators.append((~has).astype(np.float64))
    if fuse and blocks:
        ind = np.stack(indicators, axis=1)
        keep = ind[~test].std(axis=0) > 0                   # constant indicators carry nothing
        F = np.concatenate(blocks + ([ind[:, keep]] if keep.any() else []), axis=1)
        r = _fit_eval(F, y, ~test, test, seed)
        r["coverage"] = 1.0 if n_test else 0.0
        r["modalities"] = [n for n in features if n != "patient"]
        results["fused"] = r
    return results


# ---- from a store ----------------------------------------------------------------------------------
def _hash01(seed: int, pid: str) -> float:
    h = hashlib.blake2b(f"outcome|{seed}|{pid}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64


def stratified_hash_split(pids: Sequence[str], y: np.ndarray, test_fraction: float = 0.3,
                          seed: int = 0) -> np.ndarray:
    """Deterministic stratified split: per class, the ``round(test_fraction * n_c)`` (≥ 1 when the
    class has ≥ 2 patients) patients with the smallest hash of ``(seed, patient_id)`` go to test."""
    test = np.zeros(len(pids), dtype=bool)
    for c in (0, 1):
        idx = np.flatnonzero(y == c)
        order = sorted(idx, key=lambda i: (_hash01(seed, pids[i]), pids[i]))
        k = int(round(test_fraction * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        test[order[:k]] = True
    return test


def _hpo_ancestors(terms: Mapping[str, Any], hpo_id: str, memo: dict[str, frozenset]) -> frozenset:
    if hpo_id in memo:
        return memo[hpo_id]
    memo[hpo_id] = frozenset({hpo_id})                 # cycle guard
    t = terms.get(hpo_id)
    acc = {hpo_id}
    for p in (t.parents if t is not None else []):
        acc |= _hpo_ancestors(terms, p, memo)
    memo[hpo_id] = frozenset(acc)
    return memo[hpo_id]


def target_labels(engine, target: str) -> set[str]:
    """Patient ids that are positive for ``target`` (see the module doc)."""
    target = str(target).strip()
    if target.lower().startswith("sql:"):
        pred = target[4:].strip()
        if not pred:
            raise ValueError("empty sql: predicate")
        t = engine.select_where("conditions", pred, ["patient_id"])       # one expression, read-only connection
        return set(t.column(0).to_pylist()) - {None}
    if target.upper().startswith("HP:"):
        ph = engine.resources.phenotypes
        want = ph.current(target) or target
        t = engine.sql("select distinct patient_id, hpo_id from conditions "
                       "where patient_id is not null and hpo_id is not null")
        memo: dict[str, frozenset] = {}
        pos = set()
        for pid, h in zip(t.column(0).to_pylist(), t.column(1).to_pylist()):
            h2 = ph.current(h) or h
            if want in _hpo_ancestors(ph.terms, h2, memo) or target in _hpo_ancestors(ph.terms, h, memo):
                pos.add(pid)
        return pos
    code = target.split(":", 1)[1] if target.upper().startswith("SNOMED:") else target
    t = engine.sql("select distinct patient_id from conditions where patient_id is not null and code = ?", [code])
    return set(t.column(0).to_pylist())


def _split_config(engine, model: dict) -> tuple[float, int]:
    from pathlib import Path

    try:
        cfg = json.loads((Path(model["path"]) / "config.json").read_text())
        data = (cfg.get("train") or {}).get("data") or {}
        return float(data.get("val_fraction", 0.2)), int(data.get("split_seed", 0))
    except (OSError, ValueError, TypeError):
        return 0.2, 0


def patient_features(engine, modalities: Sequence[str] | None = None) -> tuple[str, dict[str, dict[str, np.ndarray]]]:
    """(model_version, {modality: {patient_id: mean vector}}) of the current model's embeddings,
    modalities ``modalities`` (default: note, image, labs, variants) plus ``patient``."""
    from raretarget.index.generations import vectors_of

    model = engine.current_model()
    if model is None:
        raise RuntimeError("no trained model in this store: call Engine.train() then Engine.embed()")
    version = model["model_version"]
    gens = engine.generations()
    mods = list(modalities) if modalities else list(MODALITIES)
    bad = [m for m in mods if m in ("gene", "patient", "fused")]
    if bad:
        raise ValueError(f"not a per-patient modality: {bad}")
    out: dict[str, dict[str, np.ndarray]] = {}
    for m in [*mods, "patient"]:
        t = gens.read_embeddings(version, m)
        if t.num_rows == 0:
            continue
        pids = np.asarray(t.column("patient_id").to_pylist(), dtype=object)
        vecs = vectors_of(t).astype(np.float64)
        ok = np.array([p is not None for p in pids], dtype=bool)
        pids, vecs = pids[ok], vecs[ok]
        uniq, inv = np.unique(pids.astype(str), return_inverse=True)
        sums = np.zeros((len(uniq), vecs.shape[1]))
        np.add.at(sums, inv, vecs)
        cnt = np.bincount(inv, minlength=len(uniq))[:, None]
        out[m] = {p: v for p, v in zip(uniq.tolist(), sums / cnt)}
    if not out:
        raise RuntimeError(f"no embeddings for model {version}: call Engine.embed() first")
    return version, out


def predict_outcome(engine, target: str, *, modalities: Sequence[str] | None = None, seed: int = 0,
                    labels: Mapping[str, int] | None = None) -> dict:
    """Predict a patient-level ``target`` from each modality's embeddings and their fusion.

    See the module doc for targets, features, split and classifier. ``modalities``: subset of
    note/image/labs/variants (default all that were embedded). ``labels``: explicit
    ``{patient_id: 0/1}`` instead of deriving them from ``target``. Raises ValueError with fewer than
    10 labelled patients or when one class is missing.
    """
    from raretarget.encoders.data import is_val

    version, feats = patient_features(engine, modalities)
    embedded = sorted(set().union(*[set(d) for d in feats.values()]))
    if labels is not None:
        lab = {str(p): int(bool(v)) for p, v in labels.items()}
        pids = [p for p in embedded if p in lab]
        y = np.array([lab[p] for p in pids], dtype=np.int64)
    else:
        pos = target_labels(engine, target)
        pids = embedded
        y = np.array([int(p in pos) for p in pids], dtype=np.int64)
    n, n_pos = len(pids), int(y.sum())
    if n < MIN_PATIENTS:
        raise ValueError(f"target {target!r}: only {n} labelled patient(s) with embeddings; need ≥ {MIN_PATIENTS}")
    if n_pos == 0 or n_pos == n:
        raise ValueError(f"target {target!r}: {n_pos} positive(s) among {n} patients — both classes are needed")

    model = engine.current_model()
    vf, split_seed = _split_config(engine, model)
    test = np.array([is_val(p, vf, split_seed) for p in pids], dtype=bool)
    val_test = test
    ok = (test.sum() >= MIN_VAL_SHARE * n and vf >= 0.2 - 1e-9
          and y[test].min() != y[test].max() and y[~test].min() != y[~test].max())
    if ok:
        split = f"encoder validation split (is_val, val_fraction={vf:g}, split_seed={split_seed})"
    else:
        test = stratified_hash_split(pids, y, 0.3, seed)
        split = (f"stratified 70/30 hash split (seed={seed}); the encoder validation split was unusable "
                 f"({int(val_test.sum())}/{n} patients, {int(y[val_test].sum())} positive)")
        if y[~test].min() == y[~test].max() or y[test].min() == y[test].max():
            raise ValueError(f"target {target!r}: {n_pos} positive(s) among {n} patients — too few to hold out "
                             "both classes")

    order = [m for m in (modalities or MODALITIES) if m in feats] + ["patient"]
    mats = {}
    for m in order:
        if m not in feats:
            continue
        d = len(next(iter(feats[m].values())))
        X = np.full((n, d), np.nan)
        for i, p in enumerate(pids):
            v = feats[m].get(p)
            if v is not None:
                X[i] = v
        mats[m] = X
    res = evaluate_features(mats, y, test, fuse=True, seed=seed)
    results = {m: res[m] for m in order if m in res and m != "patient"}
    if "fused" in res:
        results["fused"] = res["fused"]
    if "patient" in res:
        results["patient"] = res["patient"]
    return {"target": target, "model_version": version, "n_patients": n, "n_train": int((~test).sum()),
            "n_test": int(test.sum()), "positives": n_pos, "positives_test": int(y[test].sum()),
            "split": split, "classifier": "L2 logistic regression (class-balanced, l2 by inner stratified CV)",
            "results": results}
