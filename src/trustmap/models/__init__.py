"""The model zoo: classifiers for [N, C, 28, 28] images in [0, 1] that return logits."""

from trustmap.models.base import Classifier, Normalize
from trustmap.models.zoo import ModelInfo, build, describe, names

__all__ = ["Classifier", "ModelInfo", "Normalize", "build", "describe", "names"]
