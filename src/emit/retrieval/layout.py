"""The files of a retrieval run folder, named once (no imports: every module may use them).

A run folder (``emit retrieval train --out RUN``) holds the text encoder's files
(:mod:`emit.retrieval.encoders.base`), and:

* :data:`MODEL_FILE` -- the model's record: configuration, margin, identity, training log;
  written last by :meth:`emit.retrieval.model.RetrievalModel.save`;
* :data:`PROJECTION_FILE` -- the learned image projection's weights (if the model has one);
* :data:`BANK_FILE` -- the hubness bank (:mod:`emit.retrieval.hubness`);
* :data:`CURVES` -- the training curves (:func:`emit.plots.plot_curves`);
* :data:`CHECKPOINT` -- only while training has not finished (:mod:`emit.retrieval.checkpoint`).
"""

MODEL_FILE = "retrieval.json"
PROJECTION_FILE = "image_projection.safetensors"
BANK_FILE = "hubness_bank.safetensors"
CURVES = "training.png"
CHECKPOINT = "checkpoint.pt"
