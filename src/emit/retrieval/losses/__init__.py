"""Training losses that pull a text embedding onto its image's vector.

:mod:`emit.retrieval.losses.registry` lists them (one :class:`~.registry.LossSpec` each: name,
metric, whether it needs mined negatives, help) and calls each one the same way, on a
:class:`~emit.retrieval.losses.batch.LossBatch`. Each module holds one loss: its tensor maths
(``patr_loss``, ``triplet_loss``, ``l2_loss``, ``vse_loss``, ``infonce_loss``) and
``per_pair(batch, config)``, the registry's calling convention.

Two families, by what they need from the batch:

* per-anchor losses with explicit negatives -- ``patr_loss`` and ``triplet_loss`` take
  ``(text, pos, neg)`` with ``neg`` (B, N, D), e.g. ``image_emb[neg_index]`` from
  :func:`emit.retrieval.mining.mine_negatives`, and its ``valid`` as ``mask``; ``l2_loss``
  takes only ``(text, pos)``;
* in-batch losses -- ``vse_loss`` and ``infonce_loss`` take ``(text, image, image_ids)`` and
  use every other pair of the batch as a negative, except pairs of the same image.

Importing this package loads nothing else: the registry names losses without torch.
"""
