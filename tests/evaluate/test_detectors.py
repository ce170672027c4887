"""Feature-space detectors against hand-computed cases and explicit NumPy formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from trustmap.errors import DataError, ModelError
from trustmap.evaluate.detectors import GaussianFit, knn, mahalanobis, relative_mahalanobis
from trustmap.models import build
from trustmap.models.features import features, last_linear


def _hand_case() -> tuple[torch.Tensor, torch.Tensor]:
    # class 0 at (0, 0) +- (1, 0); class 1 at (4, 0) +- (0, 1): within-class covariance
    # = (1/4) * [[2, 0], [0, 2]] = 0.5 I
    x = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [4.0, -1.0], [4.0, 1.0]])
    return x, torch.tensor([0, 0, 1, 1])


def test_mahalanobis_hand_computed() -> None:
    x, y = _hand_case()
    fit = GaussianFit(2).update(x, y).finish()
    torch.testing.assert_close(fit.means, torch.tensor([[0.0, 0.0], [4.0, 0.0]],
                                                      dtype=torch.float64))
    torch.testing.assert_close(fit.precision, 2 * torch.eye(2, dtype=torch.float64))
    # (1, 1): to class 0: 2 * (1 + 1) = 4; to class 1: 2 * (9 + 1) = 20 -> 4
    # (2, 0): 2 * 4 = 8 to either class -> 8
    scores = mahalanobis(fit, torch.tensor([[1.0, 1.0], [2.0, 0.0]]))
    torch.testing.assert_close(scores, torch.tensor([4.0, 8.0]))


def test_relative_mahalanobis_hand_computed() -> None:
    x, y = _hand_case()
    fit = GaussianFit(2).update(x, y).finish()
    # background: mean (2, 0), covariance diag(E[x^2] - 4, E[y^2]) = diag(8.5 - 4, 0.5)
    torch.testing.assert_close(fit.mean, torch.tensor([2.0, 0.0], dtype=torch.float64))
    query = torch.tensor([[1.0, 1.0]])
    md0 = (1 - 2) ** 2 / 4.5 + 1 ** 2 / 0.5
    torch.testing.assert_close(relative_mahalanobis(fit, query),
                               torch.tensor([4.0 - md0], dtype=torch.float32))


def test_streaming_fit_equals_the_numpy_one_shot_fit() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(600, 8, generator=generator) + torch.arange(8.0)
    y = torch.randint(0, 3, (600,), generator=generator)
    fit = GaussianFit(3)
    for xs, ys in zip(x.split(97), y.split(97), strict=True):
        fit.update(xs, ys)
    found = fit.finish()
    a, labels = x.double().numpy(), y.numpy()
    means = np.stack([a[labels == k].mean(0) for k in range(3)])
    centred = a - means[labels]
    sigma = centred.T @ centred / len(a)
    np.testing.assert_allclose(found.means.numpy(), means, rtol=1e-10)
    np.testing.assert_allclose(found.precision.numpy(), np.linalg.inv(sigma), rtol=1e-8)
    query = torch.randn(50, 8, generator=generator).double()
    q = query.numpy()
    expected = np.min([np.einsum("nd,de,ne->n", q - m, np.linalg.inv(sigma), q - m)
                       for m in means], axis=0)
    np.testing.assert_allclose(mahalanobis(found, query, batch_size=7).numpy(), expected,
                               rtol=1e-5)


def test_knn_is_the_kth_normalised_distance_in_chunks() -> None:
    generator = torch.Generator().manual_seed(1)
    bank, query = torch.randn(300, 6, generator=generator), torch.randn(40, 6, generator=generator)
    b = bank.numpy() / np.linalg.norm(bank.numpy(), axis=1, keepdims=True)
    q = query.numpy() / np.linalg.norm(query.numpy(), axis=1, keepdims=True)
    distances = np.sqrt(((q[:, None] - b[None]) ** 2).sum(-1))
    expected = np.sort(distances, 1)[:, 4]
    np.testing.assert_allclose(knn(bank, query, k=5, chunk=7, bank_chunk=64).numpy(), expected,
                               rtol=1e-5, atol=1e-6)
    # a query equal to a bank row is at distance 0 from its nearest neighbour
    assert float(knn(bank, bank[:1], k=1)[0]) < 1e-3


def test_bad_input_says_what_to_do() -> None:
    x, y = _hand_case()
    with pytest.raises(DataError, match="class 'b' has 1 training feature"):
        GaussianFit(2).update(x[:3], y[:3]).finish(["a", "b"])
    with pytest.raises(DataError, match=r"k must be an integer in \[1, 4\]"):
        knn(x, x, k=5)
    with pytest.raises(DataError, match="NaN or inf"):
        knn(x, torch.full((1, 2), float("nan")))
    with pytest.raises(DataError, match=r"labels must lie in \[0, 2\)"):
        GaussianFit(2).update(x, torch.tensor([0, 1, 2, 1]))


def test_features_are_the_input_of_the_last_linear_layer(mnist_test) -> None:
    torch.manual_seed(0)
    model = build("lenet").eval()
    images = mnist_test.images[:10]
    name = last_linear(model, images)
    assert isinstance(dict(model.named_modules())[name], nn.Linear)
    seen = []
    hook = dict(model.named_modules())[name].register_forward_hook(
        lambda _, args, __: seen.append(args[0].detach()))
    with torch.no_grad():
        model(images)
    hook.remove()
    torch.testing.assert_close(features(model, images, batch_size=3), seen[0].flatten(1))
    with pytest.raises(ModelError, match="no layer 'features.conv9'"):
        features(model, images, layer="features.conv9")
