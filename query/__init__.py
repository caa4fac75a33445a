"""raretarget.query: hypothesis queries in the shared space (:mod:`.search`), structured patient filters
(:mod:`.filters`) and retrieval metrics (:mod:`.metrics`)."""
