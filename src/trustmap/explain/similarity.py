"""How alike two attribution maps are: rank and cosine similarity, batched over map pairs.

Used for disagreement between the members of an ensemble and for the sanity check, which both
compare many maps at once; maps are flattened over all but the leading (batch) dimensions.
"""

from __future__ import annotations

import torch

from trustmap.errors import DataError


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..P along the last dim, ties sharing their average rank (as scipy's rankdata).

    Maps with flat regions (Grad-CAM after ReLU, zero background) have many ties, and ordinal
    ranks would then correlate by accident of sort order.
    """
    flat = values.reshape(-1, values.shape[-1]).double()
    n, p = flat.shape
    sorted_values, order = flat.sort(dim=1, stable=True)
    # A new run of equal values starts wherever the sorted value changes.
    starts = torch.ones_like(sorted_values, dtype=torch.bool)
    starts[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    run_id = starts.long().cumsum(1) - 1  # [n, p], run index per sorted position
    position = torch.arange(1, p + 1, dtype=torch.float64).expand(n, p)
    total = torch.zeros(n, p, dtype=torch.float64).scatter_add_(1, run_id, position)
    ones = torch.ones_like(position)
    count = torch.zeros(n, p, dtype=torch.float64).scatter_add_(1, run_id, ones)
    mean_rank = (total / count.clamp_min(1)).gather(1, run_id)
    ranks = torch.empty_like(mean_rank).scatter_(1, order, mean_rank)
    return ranks.view(values.shape)


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Correlation of a[i] and b[i] over the last dim; 0 where either is constant."""
    a = a.double() - a.double().mean(-1, keepdim=True)
    b = b.double() - b.double().mean(-1, keepdim=True)
    denominator = (a.square().sum(-1) * b.square().sum(-1)).sqrt()
    numerator = (a * b).sum(-1)
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1e-300),
                       torch.zeros_like(numerator))


def _flatten(a: torch.Tensor, b: torch.Tensor, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape:
        raise DataError(f"maps to compare must have the same shape, got {list(a.shape)} and "
                        f"{list(b.shape)}")
    if a.ndim <= dims:
        raise DataError(f"maps need {dims} map dimension(s) after the batch dimensions, got shape "
                        f"{list(a.shape)}")
    return a.flatten(-dims), b.flatten(-dims)


def spearman(a: torch.Tensor, b: torch.Tensor, map_dims: int = 3) -> torch.Tensor:
    """Spearman rank correlation of each pair of maps (the last ``map_dims`` dims are one map)."""
    a, b = _flatten(a, b, map_dims)
    return pearson(average_ranks(a), average_ranks(b)).float()


def cosine(a: torch.Tensor, b: torch.Tensor, map_dims: int = 3) -> torch.Tensor:
    """Cosine similarity of each pair of maps; 0 where either map is all zeros."""
    a, b = _flatten(a, b, map_dims)
    a, b = a.double(), b.double()
    norms = a.norm(dim=-1) * b.norm(dim=-1)
    dot = (a * b).sum(-1)
    return torch.where(norms > 0, dot / norms.clamp_min(1e-300), torch.zeros_like(dot)).float()


def pairwise_mean(samples: torch.Tensor, similarity: str = "spearman") -> torch.Tensor:
    """Mean similarity over all pairs of samples: [S, N, ...map] -> [N].

    Ranks are computed once per sample; the S(S-1)/2 pairwise correlations then come from one
    Gram matrix per input, so 20 MC-dropout samples cost little more than 5 members.
    """
    if samples.ndim < 3 or samples.shape[0] < 2:
        raise DataError("pairwise similarity needs samples [S, N, ...] with S >= 2, got shape "
                        f"{list(samples.shape)}")
    flat = samples.flatten(2).double()  # [S, N, P]
    if similarity == "spearman":
        flat = average_ranks(flat)
        flat = flat - flat.mean(-1, keepdim=True)
    elif similarity != "cosine":
        raise DataError(f"unknown similarity {similarity!r}; choose 'spearman' or 'cosine'")
    norms = flat.norm(dim=-1)  # [S, N]
    unit = flat / norms.clamp_min(1e-300).unsqueeze(-1)
    unit = torch.where(norms.unsqueeze(-1) > 0, unit, torch.zeros_like(unit))
    gram = torch.einsum("snp,tnp->nst", unit, unit)  # [N, S, S]
    s = samples.shape[0]
    off_diagonal = gram.sum((1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(1)
    return (off_diagonal / (s * (s - 1))).float()
