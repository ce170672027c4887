"""Feature-space detectors against hand-computed cases and explicit NumPy formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp
from torch import nn

from trustmap.errors import ConfigError, DataError, ModelError
from trustmap.evaluate import detectors
from trustmap.evaluate.detectors import (
    DETECTORS,
    ClassGaussianFit,
    DetectorOptions,
    GaussianFit,
    Head,
    ddu,
    fit_vim,
    knn,
    mahalanobis,
    react_clip,
    react_energy,
    relative_mahalanobis,
    vim,
)
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


def test_vim_hand_computed() -> None:
    # W = I, b = (1, -1): origin u = -W^+ b = (-1, 1) and the logits are x + b = x - u.
    # Shifted training features x - u = (+-3, +-1): second moment diag(9, 1), so with D = 2 the
    # default dim 1 keeps axis 0 and the residual is |(x - u)_1| = 1 for each. Max logits 3, 3,
    # 1, -1 average 1.5, so alpha = 1.5 / 1 = 1.5.
    head = Head(torch.eye(2), torch.tensor([1.0, -1.0]))
    shifted = torch.tensor([[3.0, 1.0], [3.0, -1.0], [-3.0, 1.0], [-3.0, -1.0]])
    fitted = fit_vim(shifted - head.bias, head)
    torch.testing.assert_close(fitted.origin, torch.tensor([-1.0, 1.0], dtype=torch.float64))
    assert fitted.residual.abs().flatten().tolist() == [0.0, 1.0]
    assert fitted.alpha == pytest.approx(1.5)
    # query with x - u = (0, 2): 1.5 * 2 - log(e^0 + e^2); x - u = (0, 0): 0 - log 2
    queries = torch.tensor([[0.0, 2.0], [0.0, 0.0]]) - head.bias
    expected = [3 - math.log(1 + math.e ** 2), -math.log(2)]
    torch.testing.assert_close(vim(fitted, queries), torch.tensor(expected))
    # the score is the log-odds of the virtual class: softmax over [alpha r, l_1, l_2] at 0
    virtual = torch.softmax(torch.tensor([3.0, 0.0, 2.0]), 0)[0]
    assert float(vim(fitted, queries[:1])[0]) == pytest.approx(
        float((virtual / (1 - virtual)).log()), rel=1e-5)


def test_vim_is_the_numpy_eigh_formula_on_random_data() -> None:
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(400, 8, generator=generator) * torch.linspace(0.5, 3, 8) + 1
    head = Head(torch.randn(5, 8, generator=generator), torch.randn(5, generator=generator))
    query = torch.randn(30, 8, generator=generator) * 2
    a, q = x.double().numpy(), query.double().numpy()
    w, b = head.weight.double().numpy(), head.bias.double().numpy()
    u = -np.linalg.pinv(w) @ b
    _, vectors = np.linalg.eigh((a - u).T @ (a - u) / len(a))
    residual = vectors[:, :8 - 3]  # eigh is ascending: all but the top dim = 3
    alpha = (a @ w.T + b).max(1).mean() / np.linalg.norm((a - u) @ residual, axis=1).mean()
    expected = (alpha * np.linalg.norm((q - u) @ residual, axis=1)
                - logsumexp(q @ w.T + b, axis=1))
    fitted = fit_vim(x, head, dim=3, batch_size=64)
    assert fitted.alpha == pytest.approx(alpha, rel=1e-10)
    np.testing.assert_allclose(vim(fitted, query, batch_size=7).numpy(), expected, rtol=1e-5,
                               atol=1e-5)
    # the default dim for D = 8 is D // 2 = 4
    assert fit_vim(x, head).residual.shape == (8, 4)


def test_react_hand_computed() -> None:
    # activations 0..9: the 50th percentile is 4.5 (halfway between 4 and 5), the 90th 8.1
    x = torch.arange(10.0).reshape(5, 2)
    assert react_clip(x, 50) == pytest.approx(4.5)
    assert react_clip(x, 90) == pytest.approx(8.1)
    # W = I, b = 0: (10, 0) is clipped to (4.5, 0), energy -log(e^4.5 + 1); (1, 2) is not
    head = Head(torch.eye(2), torch.zeros(2))
    scores = react_energy(head, 4.5, torch.tensor([[10.0, 0.0], [1.0, 2.0]]))
    expected = [-math.log(math.exp(4.5) + 1), -math.log(math.e + math.e ** 2)]
    torch.testing.assert_close(scores, torch.tensor(expected))


def test_react_is_the_numpy_formula_and_samples_past_the_quantile_limit(monkeypatch) -> None:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(500, 12, generator=generator).relu()
    head = Head(torch.randn(4, 12, generator=generator), torch.randn(4, generator=generator))
    query = torch.randn(40, 12, generator=generator).relu() * 3
    clip = np.percentile(x.numpy(), 90)
    assert react_clip(x) == pytest.approx(clip, rel=1e-6)
    w, b = head.weight.double().numpy(), head.bias.double().numpy()
    expected = -logsumexp(np.minimum(query.double().numpy(), clip) @ w.T + b, axis=1)
    np.testing.assert_allclose(react_energy(head, react_clip(x), query, batch_size=9).numpy(),
                               expected, rtol=1e-5)
    # past the limit, a seeded sample of `limit` activations: close, and the same every time
    monkeypatch.setattr(detectors, "_EXACT_LIMIT", 2000)
    sampled = react_clip(x)
    assert sampled == react_clip(x)
    assert abs(float((x <= sampled).double().mean()) - 0.9) < 0.02


def _ddu_case() -> tuple[torch.Tensor, torch.Tensor]:
    # class 0: (+-1, 0), (0, +-1): mean 0, covariance (1/3) diag(2, 2) = (2/3) I;
    # class 1: (4, +-1): mean (4, 0), covariance diag(0, 2), singular: jitter 0 fails and the
    # next rung, 1e-20, succeeds. Priors 4/6 and 2/6.
    x = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0], [4.0, -1.0], [4.0, 1.0]])
    return x, torch.tensor([0, 0, 0, 0, 1, 1])


def test_ddu_hand_computed() -> None:
    fitted = ClassGaussianFit(2).update(*_ddu_case()).finish()
    assert fitted.jitter == 1e-20
    torch.testing.assert_close(fitted.log_priors.exp(), torch.tensor([4 / 6, 2 / 6],
                                                                     dtype=torch.float64))
    # at (0, 0) class 1 is 4 / sqrt(1e-20) deviations away and adds nothing:
    # -log q = -[log(4/6) - log(2 pi) - (1/2) log det((2/3) I)] = log(2 pi)
    # at (4, 0): class 0 is at squared distance 16 / (2/3) = 24, class 1 at 0
    log_two_pi = math.log(2 * math.pi)
    near_zero = math.log(4 / 6) - log_two_pi - math.log(2 / 3) - 24 / 2
    near_four = math.log(2 / 6) - log_two_pi - 0.5 * math.log(1e-20 * (2 + 1e-20))
    scores = ddu(fitted, torch.tensor([[0.0, 0.0], [4.0, 0.0]]))
    torch.testing.assert_close(scores, torch.tensor([log_two_pi,
                                                     -float(np.logaddexp(near_zero, near_four))]))


def _ddu_numpy(a: np.ndarray, labels: np.ndarray, q: np.ndarray, jitter: float,
               density: str) -> np.ndarray:
    """-log sum_k pi_k N(q; mu_k, Sigma_k + jitter I), Sigma_k with 1/(n_k - 1)."""
    terms = []
    for k in range(labels.max() + 1):
        own = a[labels == k]
        covariance = np.cov(own.T) + jitter * np.eye(a.shape[1])
        if density == "scipy":
            log_pdf = stats.multivariate_normal(own.mean(0), covariance).logpdf(q)
        else:
            centred = q - own.mean(0)
            _, log_det = np.linalg.slogdet(covariance)
            distance = np.einsum("nd,nd->n", centred, np.linalg.solve(covariance, centred.T).T)
            log_pdf = -0.5 * (a.shape[1] * np.log(2 * np.pi) + log_det + distance)
        terms.append(np.log(len(own) / len(a)) + log_pdf)
    return -logsumexp(np.stack(terms, 1), axis=1)


def test_ddu_is_scipy_logpdf_and_the_numpy_formula_with_its_jitter() -> None:
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(600, 6, generator=generator) + torch.arange(6.0)
    y = torch.randint(0, 3, (600,), generator=generator)
    x[y == 1] += 3
    query = torch.randn(50, 6, generator=generator) * 3
    fitted = ClassGaussianFit(3)
    for xs, ys in zip(x.split(97), y.split(97), strict=True):
        fitted.update(xs, ys)
    found = fitted.finish()
    assert found.jitter == 0.0
    expected = _ddu_numpy(x.double().numpy(), y.numpy(), query.double().numpy(), 0.0, "scipy")
    np.testing.assert_allclose(ddu(found, query, batch_size=7).numpy(), expected, rtol=1e-5)
    # ReLU features with a dead unit (variance 0): scipy calls the covariance singular, so the
    # reference is the explicit formula with the jitter DDU needed
    dead = x.relu()
    dead[:, 2] = 0
    found = ClassGaussianFit(3).update(dead, y).finish()
    assert found.jitter == 1e-20
    expected = _ddu_numpy(dead.double().numpy(), y.numpy(), query.double().numpy(), 1e-20,
                          "numpy")
    np.testing.assert_allclose(ddu(found, query).numpy(), expected, rtol=1e-5)


def _two_classes() -> tuple[torch.Tensor, torch.Tensor, Head, torch.Tensor, torch.Tensor]:
    """Two Gaussian classes on axes 0 and 1 of 4-d features, a head that reads those axes, test
    points of both classes, and far-away points on axes 2 and 3 (where the head reads nothing)."""
    generator = torch.Generator().manual_seed(5)
    centres = torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0]])
    y = torch.randint(0, 2, (800,), generator=generator)
    x = centres[y] + 0.7 * torch.randn(800, 4, generator=generator)
    test = centres[torch.arange(100) % 2] + 0.7 * torch.randn(100, 4, generator=generator)
    angle = torch.rand(50, generator=generator) * 2 * math.pi
    far = torch.zeros(50, 4)
    far[:, 2], far[:, 3] = 20 * angle.cos(), 20 * angle.sin()
    head = Head(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]), torch.zeros(2))
    return x, y, head, test, far


@pytest.mark.parametrize("name", list(DETECTORS))
def test_every_detector_scores_far_points_higher(name: str) -> None:
    x, y, head, test, far = _two_classes()
    scorer = detectors.fit(name, x, y, head, ["a", "b"], DetectorOptions(k=10))
    near, away = scorer(test), scorer(far)
    assert near.dtype == away.dtype == torch.float32 and near.shape == (100,)
    assert float(away.min()) > float(near.max())


@pytest.mark.parametrize("name", list(DETECTORS))
def test_batched_fit_and_scoring_equal_one_shot(name: str) -> None:
    x, y, head, test, far = _two_classes()
    queries = torch.cat([test, far])
    whole = detectors.fit(name, x, y, head, ["a", "b"], DetectorOptions(k=10))(queries)
    batched = detectors.fit(name, x, y, head, ["a", "b"],
                            DetectorOptions(k=10, batch_size=37))(queries)
    torch.testing.assert_close(batched, whole, rtol=1e-5, atol=1e-4)


def test_registry_lists_looks_up_and_is_read_only() -> None:
    assert list(DETECTORS) == ["mahalanobis", "relative_mahalanobis", "knn", "vim",
                               "react_energy", "ddu"]
    assert [n for n, d in DETECTORS.items() if d.needs_head] == ["vim", "react_energy"]
    assert detectors.get("ddu").paper == "Mukhoti et al., CVPR 2023"
    with pytest.raises(ConfigError, match="unknown detector 'mahalanobs' .did you mean "
                                          "'mahalanobis'.*known detectors: mahalanobis, "):
        detectors.get("mahalanobs")
    with pytest.raises(TypeError):
        DETECTORS["mine"] = DETECTORS["knn"]  # type: ignore[index]


def test_registry_bad_input_says_what_to_do() -> None:
    x, y, head, test, _ = _two_classes()
    fit = detectors.fit
    with pytest.raises(ConfigError, match="'vim' needs the head.*last nn.Linear"):
        fit("vim", x, y, None, ["a", "b"])
    with pytest.raises(ConfigError, match="'react_energy' needs the head"):
        fit("react_energy", x, y, None, ["a", "b"])
    with pytest.raises(DataError, match=r"reads 3 features, but the features have 4"):
        fit("vim", x, y, Head(torch.ones(2, 3), torch.zeros(2)), ["a", "b"])
    with pytest.raises(DataError, match=r"bias must be \[K\] = \[2\]"):
        Head(torch.ones(2, 4), torch.zeros(3))
    with pytest.raises(ModelError, match="NaN or inf"):
        Head(torch.full((2, 4), float("nan")), torch.zeros(2))
    nan = x.clone()
    nan[7, 1] = float("nan")
    with pytest.raises(DataError, match="training features holds NaN"):
        fit("ddu", nan, y, None, ["a", "b"])
    with pytest.raises(DataError, match="class 'c' has no training features"):
        fit("mahalanobis", x, y, None, ["a", "b", "c"])
    with pytest.raises(DataError, match="class 'c' has no training features"):
        fit("ddu", x, y, None, ["a", "b", "c"])
    lonely = torch.cat([y, torch.tensor([2])])
    with pytest.raises(DataError, match="class 'c' has 1 training feature"):
        fit("ddu", torch.cat([x, x[:1]]), lonely, None, ["a", "b", "c"])
    with pytest.raises(DataError, match=r"labels must lie in \[0, 1\)"):
        fit("knn", x, y, None, ["a"])
    with pytest.raises(ConfigError, match=r"ViM's principal dimension must be an integer in "
                                          r"\[1, 4\).*got 4"):
        fit("vim", x, y, head, ["a", "b"], DetectorOptions(vim_dim=4))
    with pytest.raises(ConfigError, match=r"react_percentile must be a number in \[0, 100\]"):
        DetectorOptions(react_percentile=101)
    with pytest.raises(ConfigError, match="k = 900 is more than the 800 training features"):
        fit("knn", x, y, None, ["a", "b"], DetectorOptions(k=900))
    scorer = fit("ddu", x, y, None, ["a", "b"])
    with pytest.raises(DataError, match="features have 3 dimensions, the detector was fitted "
                                        "on 4"):
        scorer(test[:, :3])


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
