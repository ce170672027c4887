"""The model zoo: classifiers for [N, C, 28, 28] images in [0, 1] that return logits."""

from trustmap.models.base import Classifier, Normalize, channels_last, to_channels_last
from trustmap.models.zoo import ModelInfo, build, describe, names

__all__ = ["Classifier", "ModelInfo", "Normalize", "build", "channels_last", "describe", "names",
           "to_channels_last"]
