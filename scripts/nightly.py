"""Hydra app: ``python scripts/nightly.py store=STORE inputs=[night/]`` runs one nightly update.

Ingests the inputs, re-embeds only the patients whose records were added, updated or deleted,
patches the index into a new generation, checks its recall against exact search and publishes it
(see :mod:`raretarget.apps.nightly`). Writes ``<store>/runs/<timestamp>.json``. Exit code 0 when the run
published (or there was nothing to publish), 1 otherwise. All logic lives in ``Engine.update``.
``every=86400`` keeps the process up and runs again each day (``Engine.watch``: start-up and model load paid once).
"""

from __future__ import annotations

import json
import sys

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(config_path="../conf", config_name="nightly", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from raretarget import Engine

    c = OmegaConf.to_container(cfg, resolve=True)
    eng = Engine.open(c.pop("store"), links=c.pop("links"))
    inputs = c.pop("inputs") or []
    every, runs = c.pop("every"), c.pop("runs")
    logs = [eng.update(inputs, **c)] if every is None else eng.watch(inputs, every=every, runs=runs, **c)
    for log in logs:
        print(json.dumps({k: v for k, v in log.items() if k != "config"}, indent=1, default=str), flush=True)
    if not log.get("ok"):
        sys.exit(1)


if __name__ == "__main__":
    main()
