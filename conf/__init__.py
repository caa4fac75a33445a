"""The YAML configuration, shipped as package data ``raretarget.conf`` (read with :mod:`raretarget.config`) and
used as the hydra config folder of ``scripts/*.py`` (``config_path="../conf"``). No code here."""
