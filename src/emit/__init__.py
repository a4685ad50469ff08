"""emit: match images and texts through embeddings.

Two workflows share one image side:

* pairing  -- assign each product image the option tag it shows (EMIT, Xu 2022),
* retrieval -- map titles and queries into a frozen CNN's feature space (Aggarwal et al. 2019).
"""

__version__ = "0.1.0"
