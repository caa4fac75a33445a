"""Configuration: the YAML under ``conf/`` is the one source of defaults.

``conf/`` is shipped as package data (``raretarget.conf``), so the Python API (``Engine.train``, ``update``,
``rank_targets`` …) reads the same files as the hydra apps in ``scripts/`` (``config_path="../conf"``).
:func:`compose` follows a config's ``defaults`` list the way hydra does (``group[@package]: option`` and
``_self_``), with group choices overridable, and resolves interpolations, so e.g. the Python training defaults are
exactly ``python scripts/train.py data=store trainer=auto``. Files are read on call, never at import.
"""

from __future__ import annotations

import copy
from importlib import resources
from typing import Any, Mapping

PACKAGE = "raretarget.conf"


def conf_root():
    """The packaged ``conf/`` folder (an ``importlib.resources`` Traversable)."""
    return resources.files(PACKAGE)


def load_yaml(name: str) -> dict[str, Any]:
    """One file of ``conf/`` (e.g. ``"prioritize/default.yaml"``) as a plain dict, uncomposed and unresolved."""
    import yaml

    return yaml.safe_load(conf_root().joinpath(name).read_text(encoding="utf-8")) or {}


def _put(cfg: dict, dotted: str, value: Any) -> None:
    node = cfg
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def compose(config_name: str, choices: Mapping[str, str] | None = None, resolve: bool = True) -> dict[str, Any]:
    """``conf/<config_name>.yaml`` composed with its ``defaults`` list and resolved; the ``hydra`` node dropped.

    ``choices`` overrides group options as on a hydra command line (``{"data": "store", "trainer": "auto"}``);
    keys are the defaults-list keys (``"encoder@encoders.image"``). ``???`` (mandatory) values are kept as
    ``"???"``. ``resolve=False`` keeps interpolations (``${model.embed_dim}``) for :func:`resolve` after a caller's
    values are merged in, as hydra resolves after command-line overrides."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("now"):           # hydra's resolver, registered the same way by hydra apps
        from datetime import datetime

        OmegaConf.register_new_resolver("now", lambda pattern: datetime.now().strftime(pattern), use_cache=True)
    choices = dict(choices or {})
    body = load_yaml(f"{config_name}.yaml")
    entries = body.pop("defaults", None) or ["_self_"]
    body.pop("hydra", None)
    layers: list[Any] = []
    for entry in entries:
        if entry == "_self_":
            layers.append(body)
            continue
        (key, option), = dict(entry).items()
        option = choices.pop(key, option)
        if option is None:
            continue
        group, _, package = key.partition("@")
        part: dict[str, Any] = {}
        _put(part, package or group, load_yaml(f"{group}/{option}.yaml"))
        layers.append(part)
    if choices:
        raise KeyError(f"{config_name}.yaml has no defaults entry {sorted(choices)}")
    cfg = OmegaConf.merge(*[OmegaConf.create(copy.deepcopy(x)) for x in layers])
    return OmegaConf.to_container(cfg, resolve=resolve)  # type: ignore[return-value]


def _plain(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x if x is None or isinstance(x, (str, int, float, bool)) else None


def _interpolated(x: Any, path: tuple = ()):
    if isinstance(x, Mapping):
        for k, v in x.items():
            yield from _interpolated(v, path + (k,))
    elif isinstance(x, str) and "${" in x:
        yield path


def resolve(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a composed (and merged) config with its ``${...}`` strings resolved against it; other values,
    including objects OmegaConf cannot hold (an ``Engine`` as ``data.store``), are kept as they are."""
    from omegaconf import OmegaConf

    out = copy.deepcopy(dict(cfg))
    paths = list(_interpolated(out))
    if paths:
        done = OmegaConf.to_container(OmegaConf.create(_plain(out)), resolve=True)
        for path in paths:
            node, src = out, done
            for k in path[:-1]:
                node, src = node[k], src[str(k)]
            node[path[-1]] = src[str(path[-1])]
    return out
