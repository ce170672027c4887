from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trustmap import uncertainty as u
from trustmap.errors import ConfigError, DataError, ModelError
from trustmap.predictive import Prediction

# S = 2 samples, N = 3 inputs, K = 3 classes, written out.
PROBS = torch.tensor([
    [[0.7, 0.2, 0.1], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]],
    [[0.3, 0.6, 0.1], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]],
], dtype=torch.float64)
# Input 0: mean [0.5, 0.4, 0.1]; sample votes 0 and 1; predicted class 0.
H_MEAN = -(0.5 * math.log(0.5) + 0.4 * math.log(0.4) + 0.1 * math.log(0.1))  # 0.943348
H_S1 = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))  # 0.801819
H_S2 = -(0.3 * math.log(0.3) + 0.6 * math.log(0.6) + 0.1 * math.log(0.1))  # 0.897946
H_EXPECTED = (H_S1 + H_S2) / 2  # 0.849882


@pytest.fixture
def pred() -> Prediction:
    return Prediction.from_probs(PROBS)


def _close(actual: torch.Tensor, expected: list[float]) -> None:
    assert actual.shape == (len(expected),)
    assert torch.allclose(actual, torch.tensor(expected, dtype=actual.dtype), atol=1e-12), actual


def test_msp_hand_computed(pred) -> None:
    # The maximum probability itself (higher = more confident), ranked as 1 - max p.
    _close(u.msp(pred), [0.5, 1.0, 1 / 3])
    _close(u.get("msp").uncertainty(u.msp(pred)), [0.5, 0.0, 2 / 3])
    assert u.higher_means("msp") == u.MORE_TRUSTWORTHY


def test_entropy_hand_computed(pred) -> None:
    # A certain prediction has entropy 0 (0 log 0 = 0); uniform has log K.
    _close(u.entropy(pred), [H_MEAN, 0.0, math.log(3)])
    assert abs(H_MEAN - 0.943348) < 1e-6


def test_expected_entropy_hand_computed(pred) -> None:
    _close(u.expected_entropy(pred), [H_EXPECTED, 0.0, math.log(3)])


def test_mutual_information_hand_computed(pred) -> None:
    # Certain and identical samples: MI = 0.
    _close(u.mutual_information(pred), [H_MEAN - H_EXPECTED, 0.0, 0.0])
    assert abs((H_MEAN - H_EXPECTED) - 0.093466) < 1e-6


def test_variation_ratio_hand_computed(pred) -> None:
    # Input 0: one vote each for classes 0 and 1 -> 1 - 1/2.
    _close(u.variation_ratio(pred), [0.5, 0.0, 0.0])


def test_class_variance_hand_computed(pred) -> None:
    # Input 0: predicted class 0 has probabilities 0.7 and 0.3 -> mean 0.5, variance 0.04.
    _close(u.class_variance(pred), [0.04, 0.0, 0.0])


def test_softmax_variance_hand_computed(pred) -> None:
    # Mean [0.5, 0.4, 0.1]: deviations from 1/3 are 1/6, 1/15, -7/30 -> (25+4+49)/900/3.
    _close(u.softmax_variance(pred), [26 / 900, 2 / 9, 0.0])  # certain: var([1,0,0]) = 2/9
    assert (u.get("softmax_variance").uncertainty(u.softmax_variance(pred))
            == -u.softmax_variance(pred)).all()


def test_softmax_variance_is_seed_000_variance() -> None:
    probs = torch.randn(1, 20, 10, generator=torch.Generator().manual_seed(0)).softmax(-1)
    seed_000 = np.var(probs[0].numpy(), axis=1)  # seed 000: np.var of one model's softmax
    scores = u.softmax_variance(Prediction.from_probs(probs))
    assert np.allclose(scores.numpy(), seed_000, atol=1e-7)


def test_uncertainty_scores_rise_with_uncertainty_and_leave_the_rest(pred) -> None:
    scores = u.compute(pred)
    ranked = u.uncertainty_scores({**scores, "gradient_rank_disagreement": scores["entropy"]})
    assert torch.equal(ranked["msp"], 1 - scores["msp"])
    assert torch.equal(ranked["softmax_variance"], -scores["softmax_variance"])
    for name in ("entropy", "mutual_information", "energy"):
        assert ranked[name] is scores[name]
        assert u.higher_means(name) == u.LESS_TRUSTWORTHY
    assert ranked["gradient_rank_disagreement"] is scores["entropy"]


def test_energy_hand_computed() -> None:
    logits = torch.tensor([[[1.0, 2.0, 0.0]], [[3.0, 0.0, 1.0]]], dtype=torch.float64)
    # Mean logits [2, 1, 0.5]: -log(e^2 + e^1 + e^0.5) = -log(11.756059).
    expected = -math.log(math.exp(2) + math.exp(1) + math.exp(0.5))
    _close(u.energy(Prediction(logits)), [expected])
    assert abs(expected + 2.464369) < 1e-6
    assert torch.allclose(u.energy(Prediction(logits)),
                          -torch.logsumexp(torch.tensor([[2.0, 1.0, 0.5]], dtype=torch.float64), 1))


def test_identical_samples_have_no_disagreement() -> None:
    one = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    pred = Prediction.from_probs(one.expand(4, 2, 3))
    for name in ("mutual_information", "variation_ratio", "class_variance"):
        assert torch.allclose(u.get(name).compute(pred), torch.zeros(2), atol=1e-6), name
    assert torch.allclose(u.entropy(pred), u.expected_entropy(pred), atol=1e-6)


@pytest.fixture
def random_pred() -> Prediction:
    logits = 2 * torch.randn(7, 50, 10, generator=torch.Generator().manual_seed(1))
    return Prediction(logits)


def test_entropy_decomposes_into_expected_entropy_plus_mutual_information(random_pred) -> None:
    scores = u.compute(random_pred)
    mi = scores["mutual_information"]
    assert (mi > 0).all()
    assert torch.allclose(scores["entropy"], scores["expected_entropy"] + mi, atol=1e-6)


def test_scores_lie_in_their_ranges(random_pred) -> None:
    scores = u.compute(random_pred)
    assert all(s.shape == (50,) and s.dtype == torch.float32 for s in scores.values())
    assert ((scores["msp"] >= 0.1) & (scores["msp"] <= 1)).all()
    assert (scores["entropy"] <= math.log(10) + 1e-6).all()
    assert ((scores["variation_ratio"] >= 0) & (scores["variation_ratio"] <= 6 / 7)).all()
    assert ((scores["softmax_variance"] >= 0) & (scores["softmax_variance"] <= 0.09)).all()


def test_every_measure_but_expected_entropy_rises_when_samples_disagree() -> None:
    # Input 0: both samples sure of class 0; input 1: each sample sure of a different class.
    sure = torch.tensor([0.98, 0.01, 0.01])
    other = torch.tensor([0.01, 0.98, 0.01])
    pred = Prediction.from_probs(torch.stack([torch.stack([sure, sure]),
                                              torch.stack([sure, other])]))
    scores = u.uncertainty_scores(u.compute(pred))
    # Each sample is as sure as before, so the aleatoric part does not move.
    expected = scores.pop("expected_entropy")
    assert torch.allclose(expected[0], expected[1])
    for name, values in scores.items():
        assert values[1] > values[0], name


def test_single_sample_degenerate_measures_are_flagged_and_still_computed() -> None:
    pred = Prediction(torch.randn(1, 5, 4, generator=torch.Generator().manual_seed(2)))
    flagged = {m.name for m in u.MEASURES.values() if m.needs_multiple_samples}
    assert flagged == {"expected_entropy", "mutual_information", "variation_ratio",
                       "class_variance"}
    scores = u.compute(pred)
    assert torch.allclose(scores["expected_entropy"], scores["entropy"])
    for name in ("mutual_information", "variation_ratio", "class_variance"):
        assert torch.equal(scores[name], torch.zeros(5)), name


def test_registry_lists_and_describes_every_measure() -> None:
    import trustmap.explain  # noqa: F401  (importing the explanations registers nothing here)

    assert u.names() == (
        "msp", "entropy", "expected_entropy", "mutual_information", "variation_ratio",
        "class_variance", "softmax_variance", "energy")
    for name, measure in u.MEASURES.items():
        assert measure.name == name and u.get(name) is measure
        assert measure.definition and "\n" not in measure.definition


def test_registry_is_read_only_and_refuses_duplicates() -> None:
    with pytest.raises(TypeError):
        u.MEASURES["msp"] = u.get("entropy")  # type: ignore[index]
    with pytest.raises(ConfigError, match="already registered"):
        u.register(u.Measure("entropy", "again", u.entropy, False))
    with pytest.raises(ConfigError, match="takes a Measure"):
        u.register(u.entropy)  # type: ignore[arg-type]


def test_registry_stays_open_for_new_measures(random_pred) -> None:
    measure = u.Measure("test_max_logit", "-max_k mean_s z_sk",
                        lambda p: -p.sample_logits.mean(0).max(1).values, False)
    try:
        assert u.register(measure) is measure
        assert "test_max_logit" in u.MEASURES and u.names()[-1] == "test_max_logit"
        assert u.compute(random_pred)["test_max_logit"].shape == (50,)
    finally:
        u._REGISTRY.pop("test_max_logit", None)


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"mean 'mutual_information'.*known measures: msp"):
        u.get("mutual_informaton")
    with pytest.raises(ConfigError, match="unknown uncertainty measure 'zzz'; known"):
        u.compute(Prediction(torch.zeros(1, 1, 2)), ["zzz"])


def test_compute_selects_by_name(random_pred) -> None:
    scores = u.compute(random_pred, ["energy", "msp"])
    assert list(scores) == ["energy", "msp"]
    assert torch.equal(scores["msp"], u.msp(random_pred))


@pytest.mark.parametrize("logits, error, message", [
    (torch.zeros(5, 3), DataError, r"\[S, N, K\].*shape \(5, 3\)"),
    (torch.zeros(2, 0, 3), DataError, "non-empty"),
    (torch.zeros(2, 4, 3, dtype=torch.long), DataError, "float tensor"),
    # refused already by Prediction, so no measure ever sees it
    (torch.tensor([[[0.0, float("nan")]]]), ModelError, "1 of 2 .* not finite"),
])
def test_compute_rejects_bad_predictions(logits, error, message) -> None:
    with pytest.raises(error, match=message):
        u.compute(Prediction(logits))
