"""raretarget.query: the one query resolver (:mod:`.spec`, :class:`~.spec.QuerySpec`: free text, HPO terms, a GA4GH
Phenopacket (:mod:`.phenopacket`), a patient or an image), search in the shared space (:mod:`.search`), structured
patient filters (:mod:`.filters`) and retrieval metrics (:mod:`.metrics`)."""
