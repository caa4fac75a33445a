"""The one definition of each domain vocabulary; every other module imports from here, never copies.

* :mod:`.variants` – SO consequence terms → VEP impact (one table, with other tools' aliases), impact classes,
  ClinVar classes and the one P/LP predicate (:func:`~.variants.is_plp`, :func:`~.variants.plp_sql`);
* :mod:`.modalities` – modality names (store / result names, encoder tower → result name);
* :mod:`.refs` – ``source_ref`` prefixes (``gene:``, ``patient:``): build and parse;
* :mod:`.labs` – the packaged LOINC lab-unit table, parsed once;
* :mod:`.hpo` – hpo3's ontology, set up in one place.

Importing this package reads no file: tables are parsed on first use.
"""
