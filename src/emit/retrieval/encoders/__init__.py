"""Text encoders: map titles and queries into a frozen CNN's image-feature space.

* :mod:`~emit.retrieval.encoders.names` -- the registered names, the settings each reads, help
  (torch-free: the single source of :func:`list_text_encoders`);
* :mod:`~emit.retrieval.encoders.registry` -- ``create_text_encoder``, ``build_encoder`` (from a
  ``RetrievalConfig``), ``save_text_encoder``, ``load_text_encoder``;
* :mod:`~emit.retrieval.encoders.base` -- :class:`TextEncoder`, what every encoder provides;
* :mod:`~emit.retrieval.encoders.lstm` -- ``lstm``, Aggarwal et al. 2019: word vectors -> a
  stacked LSTM -> linear;
* :mod:`~emit.retrieval.encoders.sentence` -- ``minilm``, ``e5`` and ``minilm+e5``: frozen
  sentence model(s) -> a trained MLP;
* :mod:`~emit.retrieval.encoders.projection` -- :class:`ImageProjection`, the optional learned
  map of the image side.

Adding an encoder is one module here, its class decorated with ``@register_text_encoder(name)``,
and one line in :data:`~emit.retrieval.encoders.names.TEXT_ENCODERS`. Importing this package
loads nothing else: the names stay torch-free.
"""
