"""Attribution methods and their uncertainty over a predictive's samples.

    from trustmap.explain import attribute, attribute_samples, summarize
    maps = attribute("gradcam", model, x, target)              # [N, C, H, W]
    samples = attribute_samples("lrp-epsilon-plus", Ensemble(members), x)   # [S, N, C, H, W]
    summary = summarize(samples)                                # mean, std, CV maps
    maps = attribute("captum:Saliency", model, x, target)       # any Captum method too

Scores of how much the samples' maps disagree (``gradcam_cv``,
``<method>_rank_disagreement``, ...) are in ``trustmap.explain.disagreement``.
"""

from trustmap.explain.aggregate import (
    attribute_samples,
    class_saliency,
    cosine_disagreement,
    rank_disagreement,
    seed000_uncertainty,
    summarize,
)
from trustmap.explain.methods import METHODS, attribute, get, names, resolve
from trustmap.explain.reduce import REDUCERS, reduce

__all__ = ["METHODS", "REDUCERS", "attribute", "attribute_samples", "class_saliency",
           "cosine_disagreement", "get", "names", "rank_disagreement", "reduce", "resolve",
           "seed000_uncertainty", "summarize"]
