"""Hydra app: ``python scripts/train.py [overrides]`` trains the shared-space encoders.

Examples::

    python scripts/train.py                                   # synthetic data, CPU, tiny run
    python scripts/train.py data=store data.store=demo_store trainer=gpu
    python scripts/train.py trainer=ddp trainer.devices=4 trainer.num_nodes=2

All logic lives in :func:`raretarget.encoders.train` (no hydra inside it).
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from raretarget.encoders import train

    result = train(cfg)
    print(json.dumps({k: v for k, v in result.items() if k not in ("recall", "recall_untrained")}, indent=1,
                     default=str))
    for name in ("recall_untrained", "recall"):
        r = result.get(name) or {}
        print(f"{name}: recall@1={r.get('recall@1')} group_recall@1={r.get('group_recall@1')}")
    return result


if __name__ == "__main__":
    main()
