"""The types of what :mod:`emit.retrieval` loads on first use (its ``_EXPORTS``), for type checkers."""

from emit.retrieval.checkpoint import is_trained
from emit.retrieval.config import RetrievalConfig
from emit.retrieval.distances import score_matrix
from emit.retrieval.encoders.base import TextEncoder
from emit.retrieval.encoders.names import encoder_settings, list_text_encoders
from emit.retrieval.encoders.projection import ImageProjection
from emit.retrieval.encoders.registry import (
    build_encoder,
    create_text_encoder,
    load_text_encoder,
    save_text_encoder,
)
from emit.retrieval.evaluate import evaluate_captions, evaluate_embeddings, evaluate_model, score_validation
from emit.retrieval.hubness import HubnessBank
from emit.retrieval.index import SearchIndex, build_index, load_index
from emit.retrieval.losses.batch import LossBatch
from emit.retrieval.losses.registry import LossSpec, get_loss, list_losses, loss_metric
from emit.retrieval.model import RetrievalModel
from emit.retrieval.pairs import Pairs, split_validation
from emit.retrieval.search import IndexSearcher
from emit.retrieval.train import (
    TrainState,
    new_state,
    prepare_tasks,
    train_one_epoch,
    train_retrieval,
    train_step,
)

__all__ = [
    "HubnessBank",
    "ImageProjection",
    "IndexSearcher",
    "LossBatch",
    "LossSpec",
    "Pairs",
    "RetrievalConfig",
    "RetrievalModel",
    "SearchIndex",
    "TextEncoder",
    "TrainState",
    "build_encoder",
    "build_index",
    "create_text_encoder",
    "encoder_settings",
    "evaluate_captions",
    "evaluate_embeddings",
    "evaluate_model",
    "get_loss",
    "is_trained",
    "list_losses",
    "list_text_encoders",
    "load_index",
    "load_text_encoder",
    "loss_metric",
    "new_state",
    "prepare_tasks",
    "save_text_encoder",
    "score_matrix",
    "score_validation",
    "split_validation",
    "train_one_epoch",
    "train_retrieval",
    "train_step",
]
