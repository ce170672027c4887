"""Explanation disagreement computed in batches gives every input the score it gets alone."""

from __future__ import annotations

import torch

from trustmap.explain import disagreement
from trustmap.models import build
from trustmap.predictive import Ensemble
from trustmap.studies.ensemble_saliency import _disagreement


def test_scores_in_batches_equal_scores_of_the_whole_set(mnist_test) -> None:
    members = []
    for seed in range(2):
        torch.manual_seed(seed)
        members.append(build("lenet").eval())
    ensemble = Ensemble(members)
    images = mnist_test.images[:7]
    prediction = ensemble.predict(images)
    names = [m for m in disagreement.names() if disagreement.measure(m).method == "gradcam"]
    whole = _disagreement("gradcam", names, ensemble, images, prediction, batch_size=1024)
    batched = _disagreement("gradcam", names, ensemble, images, prediction, batch_size=3)
    assert list(batched) == names
    for name in names:
        assert batched[name].shape == (7,)
        torch.testing.assert_close(batched[name], whole[name], rtol=1e-5, atol=1e-6)
