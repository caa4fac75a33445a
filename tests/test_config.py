"""conf/ is the one source of defaults (issue 18): shipped as package data (raretarget.conf), composed for the
Python API exactly as hydra composes it for scripts/*.py, and no Python dict repeats it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from raretarget.config import compose, conf_root, load_yaml

ROOT = Path(__file__).resolve().parents[1]


def _hydra(config_name: str, overrides: list[str]) -> dict:
    from hydra import compose as hcompose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module(version_base="1.3", config_module="raretarget.conf"):
        cfg = hcompose(config_name, overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=False)


def test_packaged_conf_is_the_repository_conf():
    files = sorted(p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml"))
    assert files and "train.yaml" in files
    for f in files:
        assert conf_root().joinpath(f).read_bytes() == (ROOT / "conf" / f).read_bytes(), f


@pytest.mark.parametrize("name,choices", [("train", {"data": "store", "trainer": "auto"}), ("train", {}),
                                          ("nightly", {}), ("rank_candidates", {})])
def test_compose_equals_hydra(name, choices):
    ours = compose(name, choices)
    theirs = _hydra(name, [f"{k}={v}" for k, v in choices.items()])
    # ${now:...} is resolved by us, left as written by hydra here
    ours.pop("out_dir", None), theirs.pop("out_dir", None)
    from omegaconf import OmegaConf

    assert ours == OmegaConf.to_container(OmegaConf.create(theirs), resolve=True)


def test_python_training_defaults_are_the_yaml():
    from raretarget.encoders import knowledge, training

    d = training.default_config()
    assert d["data"] == {**load_yaml("data/store.yaml"), "store": None}      # num_workers, knowledge_batch …
    assert d["trainer"] == load_yaml("trainer/auto.yaml")
    assert d["model"]["knowledge"] == load_yaml("model/contrastive.yaml")["knowledge"]
    assert d["encoders"]["text"]["terms"] == load_yaml("encoder/text.yaml")["terms"]
    # DEFAULTS is composed on each access and its out_dir holds the time: read it once
    defaults = training.DEFAULTS
    assert defaults == {**d, "out_dir": defaults["out_dir"]}
    k = knowledge.DEFAULTS
    assert k["term_dropout"] == load_yaml("model/contrastive.yaml")["knowledge"]["term_dropout"]
    assert {x: v for x, v in k.items() if x != "seed"} == load_yaml("model/contrastive.yaml")["knowledge"]
    # resolve_config starts from them; a caller's keys win
    r = training.resolve_config({"trainer": {"max_epochs": 1}})
    assert r["trainer"]["max_epochs"] == 1 and r["trainer"]["accelerator"] == d["trainer"]["accelerator"]
    assert r["data"]["num_workers"] == load_yaml("data/store.yaml")["num_workers"]


def test_nightly_and_drift_defaults_are_the_yaml():
    from raretarget import drift, nightly

    y = load_yaml("nightly.yaml")
    n = nightly.defaults()
    assert set(n) == set(y) - {"store", "links", "inputs", "every", "runs", "hydra"}   # the app's own keys
    assert all(n[k] == y[k] for k in n if k != "drift") and n["drift"] is None
    assert drift.defaults() == y["drift"] == drift.DEFAULTS


def test_no_python_copy_of_the_defaults():
    """The modules that used to repeat conf/ hold no literal DEFAULTS dict any more (read from YAML on call)."""
    import ast

    for f in ("encoders/training.py", "encoders/knowledge.py", "raretarget/nightly.py", "raretarget/drift.py",
              "prioritize/rank.py"):
        tree = ast.parse((ROOT / f).read_text())
        for node in tree.body:
            targets = [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                targets.append(node.target.id)
            assert not ({"DEFAULTS", "DEFAULT_CONFIG"} & set(targets)), f


def test_hydra_command_line_still_composes():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "--cfg", "job", "data=store",
                          "data.store=/nowhere", "trainer=auto", "trainer.max_epochs=2"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "max_epochs: 2" in out.stdout and "store: /nowhere" in out.stdout and "term_dropout: 0.5" in out.stdout


def test_interpolations_follow_the_callers_values():
    """As with a hydra override: model.embed_dim given by the caller reaches every encoder."""
    from raretarget.encoders.training import resolve_config

    r = resolve_config({"model": {"embed_dim": 32}})
    assert {e["embed_dim"] for e in r["encoders"].values()} == {32}
    r = resolve_config(**{"model.embed_dim": 48, "data.store": object()})
    assert {e["embed_dim"] for e in r["encoders"].values()} == {48} and not isinstance(r["data"]["store"], str)
    assert "${" not in str(resolve_config())
