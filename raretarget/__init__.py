"""raretarget: cross-modal search and target prioritization for rare-disease cohorts.

>>> from raretarget import Engine
>>> eng = Engine.open("store/", create=True)
>>> report = eng.ingest(["bundles/", "images/", "cohort.vcf.gz"])
>>> eng.sql("select count(*) from observations")
"""

__version__ = "0.1.0"
__all__ = ["Engine", "IngestReport", "__version__"]


def __getattr__(name):  # lazy: importing raretarget loads nothing heavy
    if name in ("Engine", "IngestReport"):
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'raretarget' has no attribute {name!r}")
