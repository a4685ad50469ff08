"""The image side: backbones (feature extractors), the colour feature and cached extraction."""

from emit.vision.backbones import (
    DEFAULT_BACKBONE,
    Backbone,
    create_backbone,
    list_backbones,
    register_backbone,
)
from emit.vision.colour import ColourHistogram, rgb_to_lab
from emit.vision.features import FeatureCache, extract_features, feature_key

__all__ = [
    "DEFAULT_BACKBONE",
    "Backbone",
    "ColourHistogram",
    "FeatureCache",
    "create_backbone",
    "extract_features",
    "feature_key",
    "list_backbones",
    "register_backbone",
    "rgb_to_lab",
]
