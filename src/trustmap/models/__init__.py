"""The model zoo and user models: classifiers for [N, C, H, W] images in [0, 1] that return
logits. Zoo models are built for one image size (28x28 by default, ``input_size=[H, W]``
otherwise); user models (``external``) come from a factory and checkpoints or TorchScript."""

from trustmap.models.base import Classifier, Normalize, channels_last, to_channels_last
from trustmap.models.external import (
    UserClassifier,
    check_fits,
    from_factory,
    load_members,
    load_torchscript,
    load_weights,
    user_classifier,
)
from trustmap.models.zoo import ModelInfo, build, describe, names, sized

__all__ = ["Classifier", "ModelInfo", "Normalize", "UserClassifier", "build", "channels_last",
           "check_fits", "describe", "from_factory", "load_members", "load_torchscript",
           "load_weights", "names", "sized", "to_channels_last", "user_classifier"]
