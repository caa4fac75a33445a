"""raretarget.index: FAISS cosine top-k over plain arrays (:class:`VectorIndex`).

faiss is imported lazily (inside the functions that use it), so importing this package is cheap.
"""

from .vector_index import IndexMismatchError, VectorIndex, auto_factory, l2_normalize

__all__ = ["VectorIndex", "IndexMismatchError", "auto_factory", "l2_normalize"]
