"""Embedding drift of a nightly run: per modality, how far the night's new vectors are from the store's.

For each modality the incremental night re-embeds (the changed patients' records), against the vectors the
store held before the night (same model version, so the spaces are comparable):

* ``centroid_drop``: mean cosine of the store's vectors to their own (normalised) centroid minus the same for
  the new vectors: new records that sit away from where the population sits make it positive;
* ``nn_drop``: median nearest-neighbour cosine among the store's vectors minus the median nearest-neighbour
  cosine of each new vector to the store (its own old version excluded): new records unlike any old one;
* ``topk_changed``: for a fixed probe set (seeded sample of unchanged records), the mean share of each probe's
  top-k neighbours replaced by the night: how much the night changes what searches return (a growing cohort
  moves it by about new/(old+new) without any drift, hence the looser thresholds).

Thresholds (``DEFAULTS``, overridable as ``Engine.update(drift={...})`` / ``conf/nightly.yaml``) mark the
run ``drift: ok | warn | alarm`` (the worst modality and metric). A new model version is ``n/a`` (other
space), a first build ``baseline``. Values and status go into the run log (``<store>/runs/*.json``);
:func:`history` reads them back and :func:`drift_page` draws them (the report's ``drift.html``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

__all__ = ["DEFAULTS", "modality_drift", "status", "history", "drift_page"]



def defaults() -> dict:
    """Drift thresholds: ``drift`` of ``conf/nightly.yaml`` (the one source; a fresh dict per call)."""
    from raretarget.config import load_yaml

    return load_yaml("nightly.yaml")["drift"]


def __getattr__(name: str):
    # ``DEFAULTS`` stays importable, read lazily from the packaged YAML (no file is read at import)
    if name == "DEFAULTS":
        return defaults()
    raise AttributeError(name)


METRICS = ("centroid_drop", "nn_drop", "topk_changed")


def _norm(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def modality_drift(old_ids: np.ndarray, old: np.ndarray, new_ids: np.ndarray, new: np.ndarray, *, k: int = 10,
                   probes: int = 100, max_reference: int = 5000, seed: int = 0) -> dict | None:
    """Drift metrics of ``new`` vectors ``[m, D]`` (ids ``new_ids``) against the store's ``old`` ones; None when
    there is nothing to compare (no new vectors or fewer than 3 old ones). ``old``: the vectors ``[n, D]`` of
    ``old_ids``, or a function ``ids → [len(ids), D]`` called with the at most ``max_reference`` ids sampled (the
    same sample either way), so that a large store's vectors need not be read whole."""
    if len(new) == 0 or len(old_ids) < 3:
        return None
    rng = np.random.default_rng(seed)
    if len(old_ids) > max_reference:
        sel = np.sort(rng.choice(len(old_ids), max_reference, replace=False))
        old_ids = old_ids[sel]
        old = old(old_ids) if callable(old) else old[sel]
    elif callable(old):
        old = old(old_ids)
    old, new = _norm(np.asarray(old, np.float32)), _norm(new.astype(np.float32))
    c = _norm(old.mean(axis=0, keepdims=True))[0]
    centroid_drop = float((old @ c).mean() - (new @ c).mean())
    s_old = old @ old.T
    np.fill_diagonal(s_old, -np.inf)
    nn_old = s_old.max(axis=1)
    s_new = new @ old.T
    s_new[np.equal.outer(new_ids, old_ids)] = -np.inf            # not its own old version
    nn_new = s_new.max(axis=1)
    nn_new = nn_new[np.isfinite(nn_new)]
    nn_drop = float(np.median(nn_old) - np.median(nn_new)) if len(nn_new) else 0.0
    # probes: unchanged records; top-k among the old store vs among the store after the night
    changed = np.isin(old_ids, new_ids)
    cand = np.flatnonzero(~changed)
    topk_changed = 0.0
    kk = min(k, len(old) - 1)
    if len(cand) and kk > 0:
        p = cand if len(cand) <= probes else np.sort(rng.choice(cand, probes, replace=False))
        keep = ~changed
        after_ids = np.concatenate([old_ids[keep], new_ids])
        after = np.concatenate([old[keep], new])
        diff = 0
        for i in p:
            q = old[i]
            so = old @ q
            so[i] = -np.inf
            sa = after @ q
            sa[after_ids == old_ids[i]] = -np.inf
            kb = min(kk, len(after) - 1)
            a = set(old_ids[np.argsort(-so)[:kk]].tolist())
            b = set(after_ids[np.argsort(-sa)[:kb]].tolist())
            diff += len(a - b) / kk
        topk_changed = diff / len(p)
    return {"centroid_drop": round(centroid_drop, 4), "nn_drop": round(nn_drop, 4),
            "topk_changed": round(topk_changed, 4), "n_new": int(len(new)), "n_store": int(len(old))}


def status(metrics: dict[str, dict | None], thresholds: dict | None = None) -> str:
    """``ok`` / ``warn`` / ``alarm``: the worst level any modality's metric reaches."""
    th = {**defaults(), **(thresholds or {})}
    level = 0
    for m in metrics.values():
        if not m:
            continue
        for name in METRICS:
            v = m.get(name)
            if v is None:
                continue
            if v >= th[name]["alarm"]:
                level = max(level, 2)
            elif v >= th[name]["warn"]:
                level = max(level, 1)
    return ("ok", "warn", "alarm")[level]


def history(store_root) -> list[dict]:
    """``[{"started_at", "mode", "drift", "metrics"}]`` of every nightly run log, oldest first."""
    runs = sorted((Path(store_root) / "runs").glob("*.json"))
    out = []
    for f in runs:
        try:
            log = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if "drift" not in log:
            continue
        out.append({"started_at": log.get("started_at"), "mode": log.get("mode"), "drift": log.get("drift"),
                    "metrics": log.get("drift_metrics") or {}})
    return out


def _svg_lines(hist: list[dict], metric: str, warn: float, alarm: float, width: int = 420, height: int = 170) -> str:
    from .report import esc

    series: dict[str, list[tuple[int, float]]] = {}
    for i, h in enumerate(hist):
        for mod, m in (h.get("metrics") or {}).items():
            if m and m.get(metric) is not None and math.isfinite(m[metric]):
                series.setdefault(mod, []).append((i, float(m[metric])))
    left, top, bottom, right = 40, 20, 22, 90
    pw, ph = width - left - right, height - top - bottom
    vals = [v for s in series.values() for _, v in s] + [warn, alarm, 0.0]
    lo, hi = min(vals), max(vals)
    hi = hi if hi > lo else lo + 1
    n = max(len(hist) - 1, 1)

    def xy(i, v):
        return left + pw * i / n, top + ph * (1 - (v - lo) / (hi - lo))
    colors = ["#4a7ab5", "#c0504d", "#9bbb59", "#8064a2", "#d08c2c", "#4bacc6", "#777"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
           f'aria-label="{esc(metric)}" class="chart drift"><text x="4" y="14" class="t">{esc(metric)}</text>']
    for lvl, col in ((warn, "#e0b000"), (alarm, "#c00000")):
        _, y = xy(0, lvl)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="{col}" '
                   f'stroke-dasharray="4 3"><title>{"warn" if col == "#e0b000" else "alarm"} {lvl}</title></line>')
    for j, (mod, pts) in enumerate(sorted(series.items())):
        col = colors[j % len(colors)]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, v) for i, v in pts))
        out.append(f'<polyline points="{path}" fill="none" stroke="{col}" stroke-width="1.5"/>')
        for i, v in pts:
            x, y = xy(i, v)
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{col}"><title>{esc(mod)} '
                       f'{esc(hist[i].get("started_at"))}: {v:.3f}</title></circle>')
        out.append(f'<text x="{left + pw + 6}" y="{top + 12 * (j + 1)}" fill="{col}">{esc(mod)}</text>')
    out.append(f'<text x="{left - 3}" y="{top + 8}" text-anchor="end">{hi:.2f}</text>'
               f'<text x="{left - 3}" y="{top + ph}" text-anchor="end">{lo:.2f}</text></svg>')
    return "".join(out)


def drift_page(store_root, thresholds: dict | None = None) -> str | None:
    """HTML body of the drift history (status per run, one chart per metric), or None without history."""
    from .report import _table, esc

    hist = history(store_root)
    if not hist:
        return None
    th = {**defaults(), **(thresholds or {})}
    mods = sorted({m for h in hist for m in h["metrics"]})
    rows = []
    for h in reversed(hist):
        cells = [h["started_at"], h["mode"], h["drift"]]
        for mod in mods:
            m = h["metrics"].get(mod) or {}
            cells.append(" / ".join(f"{m[x]:.3f}" for x in METRICS if m.get(x) is not None) if m else "")
        rows.append(cells)
    last = hist[-1]["drift"]
    charts = "".join(_svg_lines(hist, x, th[x]["warn"], th[x]["alarm"]) for x in METRICS)
    return (f'<p>Latest nightly run: <b id="drift-status" class="drift-{esc(last)}">drift: {esc(last)}</b>. '
            "Per modality: centroid drop / nearest-neighbour drop / share of probe queries' top-k replaced "
            "(dashed lines: warn and alarm thresholds).</p>"
            f'<div class="charts">{charts}</div>'
            + _table(["run", "mode", "drift"] + mods, rows, cls="drift-history"))


def table_drift(old, new, *, k: int = 10, seed: int = 0, cfg: dict | None = None,
                read_vectors=None) -> dict | None:
    """:func:`modality_drift` of two EMBEDDINGS tables (the store's before the night, the night's new rows);
    never raises (the night's index update matters more than its drift figures). With ``read_vectors`` (record
    ids → a table of ``record_id``, ``vector``), ``old`` needs only ``record_id``: the vectors of the sampled
    reference rows are read, not the modality's."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from raretarget.index.generations import vectors_of

    c = {**defaults(), **(cfg or {})}

    def lazy(ids: np.ndarray) -> np.ndarray:
        t = read_vectors(ids)
        return vectors_of(t.take(pc.index_in(pa.array(ids, pa.int64()), value_set=t.column("record_id"))))

    try:
        if new is None or new.num_rows == 0 or old.num_rows < 3:
            return None
        return modality_drift(old.column("record_id").to_numpy(), vectors_of(old) if read_vectors is None else lazy,
                              new.column("record_id").to_numpy(), vectors_of(new), k=k, probes=int(c["probes"]),
                              max_reference=int(c["max_reference"]), seed=seed)
    except Exception as e:           # noqa: BLE001
        return {"error": type(e).__name__}
