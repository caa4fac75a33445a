"""Applications over the :class:`raretarget.Engine` facade (the top layer; nothing below imports them):

* :mod:`.cli` – the ``raretarget`` command (every subcommand);
* :mod:`.nightly` – the nightly incremental update (``Engine.update``, ``scripts/nightly.py``);
* :mod:`.report` – the static HTML report (``Engine.report``, ``raretarget report``);
* :mod:`.outcome` – held-out outcome classifiers (``Engine.predict_outcome``);
* :mod:`.serve` – the local review web app (``raretarget serve``);
* :mod:`.drift` – embedding drift metrics of nightly runs and their report page.

An app receives an Engine and uses its public methods only.
"""
