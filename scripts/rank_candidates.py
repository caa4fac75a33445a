"""Batch candidate ranking (hydra app): one ranked table per hypothesis, plus summary.json.

    python scripts/rank_candidates.py store=STORE hypotheses=hyps.yaml out=ranked/ k=50

Hydra stays at this edge; the work is ``raretarget.prioritize.batch.run_batch``.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(version_base=None, config_path="../conf", config_name="rank_candidates")
def main(cfg: DictConfig) -> int:
    from raretarget import Engine
    from raretarget.prioritize.batch import load_hypotheses, run_batch

    eng = Engine.open(cfg.store)
    weights = OmegaConf.to_container(cfg.weights, resolve=True) if cfg.get("weights") else None
    try:
        hyps = load_hypotheses(cfg.hypotheses)
        summary = run_batch(eng, hyps, cfg.out, k=_positive_k(cfg.k), weights=weights)
    except (ValueError, FileNotFoundError) as e:       # bad input: a clear message, no traceback
        print(f"rank_candidates: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"ranked {summary['ok']} of {summary['n']} hypotheses ({summary['skipped']} skipped) -> {cfg.out}")
    for h in summary["hypotheses"]:
        if h["status"] != "ok":
            print(f"  skipped {h['id']}: {h['reason']}")
    return 0


def _positive_k(k) -> int:
    if isinstance(k, bool) or not str(k).strip().isdigit() or int(k) <= 0:
        raise ValueError("k must be a positive integer")
    return int(k)


if __name__ == "__main__":
    sys.exit(main())
