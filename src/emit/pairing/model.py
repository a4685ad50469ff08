"""A trained pairing model: label vocabulary, a bag of tagger heads, and the colour baseline.

Saved as a folder: ``model.json`` (configuration, versions, backbone identity, members),
``vocab.json``, and ``weights.safetensors`` with every head's tensors.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from emit.commit import folder_commit, verify_folder
from emit.config import PairingConfig, from_dict, to_dict, versions
from emit.files import atomic_write_json, atomic_write_safetensors, read_json
from emit.pairing.assign import AssignMode, assign
from emit.pairing.confidence import Calibration, assignment_margin
from emit.pairing.cost import cost_matrix
from emit.pairing.ensemble import CombineMode, combine
from emit.pairing.projection import FeatureProjection
from emit.pairing.tagger import LISTWISE_TEMPERATURE, TaggerHead, restrict_labels, with_product_context
from emit.problems import EmitError
from emit.text.colours import COLOUR_CLASSES, colour_index
from emit.text.labels import LabelVocab

MODEL_FILE, VOCAB_FILE, WEIGHTS_FILE = "model.json", "vocab.json", "weights.safetensors"
FORMAT_VERSION = 1


def colour_one_hot(tags: Sequence[str]) -> np.ndarray:
    """The baseline's single-class targets: one manual colour class per tag."""
    out = np.zeros((len(tags), len(COLOUR_CLASSES)), dtype=np.float32)
    for i, tag in enumerate(tags):
        out[i, colour_index(tag)] = 1.0
    return out


def head_inputs(config: PairingConfig, features: np.ndarray,
                groups: Sequence[int] | np.ndarray) -> np.ndarray:
    """Head inputs for raw backbone features of images grouped by product (training and use)."""
    return with_product_context(features, groups) if config.product_context else features


@dataclass
class Member:
    """One model of the bag: the labels it sees and its head."""

    label_ids: np.ndarray
    head: TaggerHead
    seed: int
    info: dict[str, Any] = field(default_factory=dict)  # epochs, curves: for the record

    def embed(self, vocab: LabelVocab, tags: Sequence[str]) -> np.ndarray:
        return restrict_labels(vocab.encode_many(tags), self.label_ids)


@dataclass
class PairingModel:
    config: PairingConfig
    vocab: LabelVocab
    members: list[Member]
    baseline: TaggerHead | None
    backbone_identity: dict[str, Any]
    feature_dim: int
    # None: saved by an emit that did not calibrate; confidences then use Calibration()'s defaults
    calibration: Calibration | None = None
    extra_sources: list[dict[str, Any]] = field(default_factory=list)  # --extra data, for the record
    projection: FeatureProjection | None = None  # principal components of the CNN part, if any

    # ---- features -> costs -------------------------------------------------------------
    def inputs(self, features: np.ndarray, groups: Sequence[int] | np.ndarray) -> np.ndarray:
        if self.projection is not None:
            features = self.projection.apply(features)
        return head_inputs(self.config, features, groups)

    def member_logits(self, inputs: np.ndarray) -> list[np.ndarray]:
        return [m.head.logits(inputs) for m in self.members]

    def member_costs(self, logits: Sequence[np.ndarray], tags: Sequence[str]) -> list[np.ndarray]:
        return [cost_matrix(z, m.embed(self.vocab, tags), self.config.loss)
                for m, z in zip(self.members, logits, strict=True)]

    def decide(self, logits: Sequence[np.ndarray], tags: Sequence[str],
               assign_mode: AssignMode | None = None, combine_mode: CombineMode | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Tag index per image, and the mean cost matrix shown to users."""
        costs = self.member_costs(logits, tags)
        choice = combine(costs, combine_mode or self.config.bag_combine,
                         assign_mode or self.config.assign)
        return choice, np.mean(np.stack(costs), axis=0)

    @property
    def cost_temperature(self) -> float:
        """The scale of the costs: BCE costs are means over labels, so their gaps are small."""
        return LISTWISE_TEMPERATURE if self.config.loss == "bce" else 1.0

    def margin(self, cost: np.ndarray, choice: np.ndarray, assign_mode: AssignMode | None = None,
               combine_mode: CombineMode | None = None) -> float:
        """The decision's cost margin in units of the cost temperature: what calibration reads."""
        vote = (combine_mode or self.config.bag_combine) == "vote"  # per-image argmin underneath
        mode: AssignMode = "argmin" if vote else (assign_mode or self.config.assign)
        return assignment_margin(cost, choice, mode) / self.cost_temperature

    def product_confidence(self, cost: np.ndarray, choice: np.ndarray,
                           assign_mode: AssignMode | None = None,
                           combine_mode: CombineMode | None = None) -> float:
        """Calibrated probability that every image of the product got its right tag."""
        margin = self.margin(cost, choice, assign_mode, combine_mode)
        return (self.calibration or Calibration()).probability(margin)

    def baseline_decide(self, logits: np.ndarray, tags: Sequence[str],
                        assign_mode: AssignMode | None = None) -> np.ndarray:
        cost = cost_matrix(logits, colour_one_hot(tags), "softmax")
        return assign(cost, assign_mode or self.config.assign)

    # ---- persistence -------------------------------------------------------------------
    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the model's files as one commit: a reader sees the old model or this one."""
        folder = Path(folder)
        with folder_commit(folder, label="pairing-model"):
            self._write(folder)
        return folder

    def _write(self, folder: Path) -> None:
        tensors: dict[str, torch.Tensor] = {}
        for k, member in enumerate(self.members):
            for name, value in member.head.state_dict().items():
                tensors[f"member{k}.{name}"] = value.contiguous()
        if self.baseline is not None:
            for name, value in self.baseline.state_dict().items():
                tensors[f"baseline.{name}"] = value.contiguous()
        if self.projection is not None:
            tensors.update(self.projection.tensors())
        atomic_write_safetensors(folder / WEIGHTS_FILE, tensors)
        self.vocab.save(folder / VOCAB_FILE)
        meta = {
            "format": FORMAT_VERSION,
            "config": to_dict(self.config),
            "versions": versions(),
            "backbone": self.backbone_identity,
            "feature_dim": self.feature_dim,
            "members": [
                {"label_ids": m.label_ids.tolist(), "seed": m.seed, "hidden": m.head.hidden,
                 "in_dim": m.head.in_dim, "n_labels": m.head.n_labels, "info": m.info}
                for m in self.members
            ],
            "baseline": None if self.baseline is None else {
                "in_dim": self.baseline.in_dim, "hidden": self.baseline.hidden,
                "classes": COLOUR_CLASSES},
            "calibration": None if self.calibration is None else self.calibration.to_json(),
            "extra": self.extra_sources,
            "projection": None if self.projection is None else self.projection.meta(),
        }
        atomic_write_json(folder / MODEL_FILE, meta)

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> PairingModel:
        folder = Path(folder)
        verify_folder(folder, fix=f"train it again with `emit pair train DATA --out {folder}`, or restore "
                      "the folder from a copy")
        if not (folder / MODEL_FILE).is_file():
            raise EmitError(f"{folder}: not a pairing model (no {MODEL_FILE}); "
                            "train one with `emit pair train`")
        meta = read_json(folder / MODEL_FILE)
        if meta.get("format") != FORMAT_VERSION:
            raise EmitError(f"{folder / MODEL_FILE}: model format {meta.get('format')} is not "
                            f"{FORMAT_VERSION}; retrain with this version of emit")
        if "cnn_components" not in meta["config"]:  # saved before projections: raw features
            meta["config"]["cnn_components"] = 0
        config = from_dict(PairingConfig, meta["config"])
        vocab = LabelVocab.load(folder / VOCAB_FILE)
        try:
            tensors = load_file(str(folder / WEIGHTS_FILE))
        except Exception as exc:  # safetensors raises its own error types
            raise EmitError(f"{folder / WEIGHTS_FILE}: cannot read weights ({exc}); retrain") from exc

        def head(prefix: str, in_dim: int, n_labels: int, hidden: int) -> TaggerHead:
            module = TaggerHead(in_dim, n_labels, hidden, config.dropout)
            state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            try:
                module.load_state_dict(state)
            except RuntimeError as exc:
                raise EmitError(f"{folder / WEIGHTS_FILE}: weights do not match {MODEL_FILE} "
                                f"({prefix[:-1]}); retrain") from exc
            return module.eval()

        members = [
            Member(np.asarray(m["label_ids"], dtype=np.int64),
                   head(f"member{k}.", m["in_dim"], m["n_labels"], m["hidden"]), m["seed"],
                   m.get("info", {}))
            for k, m in enumerate(meta["members"])
        ]
        b = meta.get("baseline")
        baseline = None if b is None else head("baseline.", b["in_dim"], len(b["classes"]), b["hidden"])
        try:
            projection = (None if meta.get("projection") is None
                          else FeatureProjection.load(meta["projection"], tensors))
        except (KeyError, TypeError, ValueError) as exc:
            raise EmitError(f"{folder}: the feature projection in {MODEL_FILE} does not match "
                            f"{WEIGHTS_FILE} ({exc}); retrain") from exc
        cal = meta.get("calibration")
        try:
            calibration = None if cal is None else Calibration.from_json(cal)
        except (KeyError, TypeError, ValueError) as exc:
            raise EmitError(f"{folder / MODEL_FILE}: bad calibration entry ({exc}); retrain") from exc
        return cls(config, vocab, members, baseline, meta["backbone"], meta["feature_dim"], calibration,
                   list(meta.get("extra", [])), projection)
