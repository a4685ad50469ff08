"""Text-to-image retrieval: map titles and queries into a frozen CNN's image-feature space.

Follows Aggarwal et al. 2019, "Multitask Text-to-Visual Embedding with Titles and Clickthrough
Data": a text encoder is trained so that a text lands near (squared Euclidean distance) the CNN
features of its image. :mod:`emit.retrieval.losses` holds the training objectives (PATR, triplet,
L2, VSE++, InfoNCE), :mod:`emit.retrieval.mining` picks in-batch hard negatives for them, and
:mod:`emit.retrieval.distances` the shared geometry.
"""
