from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trustmap.errors import ConfigError, DataError, ModelError
from trustmap.evaluate.adversarial import (
    ATTACKS,
    bim,
    detection_table,
    fgsm,
    mean_log_probs,
    mim,
    pgd,
    run_attack,
    same_norm_noise,
    success,
    success_rate,
)
from trustmap.models import build
from trustmap.training import TrainConfig, fit


@pytest.fixture(scope="module")
def lenet5(mnist_train) -> nn.Module:
    """A LeNet-5 with light dropout, trained for 252 steps on real digits (~97% accuracy)."""
    torch.manual_seed(0)
    model = build("lenet5", dropout=0.1)
    fit(model, mnist_train, config=TrainConfig(epochs=4, batch_size=64, lr=2e-3),
        progress=False)
    model.zero_grad(set_to_none=True)  # training leaves the last batch's gradients behind
    return model.eval()


@pytest.fixture(scope="module")
def batch(mnist_test) -> tuple[torch.Tensor, torch.Tensor]:
    return mnist_test.images[:100], mnist_test.labels[:100]


def _losses(forward, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.nll_loss(forward(x), y, reduction="none")


def _modes(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def _linear(seed: int, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, classes))


def test_mean_log_probs_is_the_log_of_the_average_softmax() -> None:
    x = torch.rand(6, 1, 4, 4)
    members = [_linear(seed) for seed in range(3)]
    with torch.no_grad():
        expected = torch.stack([m(x).softmax(1) for m in members]).mean(0).log()
        single = mean_log_probs(members[:1])(x)
        assert torch.allclose(mean_log_probs(members)(x), expected, atol=1e-6)
        assert torch.allclose(single, members[0](x).log_softmax(1), atol=1e-6)


def test_mean_log_probs_stays_finite_where_members_are_certain() -> None:
    members = [_linear(seed) for seed in range(2)]
    for member in members:
        member[1].weight.data *= 1e4  # softmax underflows to exact zeros
    with torch.no_grad():
        log_probs = mean_log_probs(members)(torch.rand(8, 1, 4, 4))
    assert torch.isfinite(log_probs).all()
    assert torch.allclose(log_probs.exp().sum(1), torch.ones(8))


def test_mc_samples_really_sample_keep_batchnorm_in_eval_and_restore_modes() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.Dropout(0.5),
                          nn.Linear(8, 3))
    model.train()
    model[4].eval()  # a hand-set mix of modes must come back exactly
    before = _modes(model)
    running_mean = model[2].running_mean.clone()
    forward = mean_log_probs([model], mc_samples=4)
    x = torch.rand(5, 1, 4, 4)
    with torch.no_grad():
        first, second = forward(x), forward(x)
    assert not torch.allclose(first, second)
    assert torch.allclose(first.exp().sum(1), torch.ones(5))
    assert torch.equal(model[2].running_mean, running_mean)  # BatchNorm ran in eval mode
    assert _modes(model) == before
    with pytest.raises(RuntimeError):
        forward(torch.rand(5, 1, 3, 3))  # wrong input size fails inside the model
    assert _modes(model) == before


def test_mean_log_probs_refuses_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="at least one model"):
        mean_log_probs([])
    with pytest.raises(ConfigError, match="mc_samples"):
        mean_log_probs([_linear(0)], mc_samples=-1)
    with pytest.raises(ModelError, match="no dropout"):
        mean_log_probs([_linear(0)], mc_samples=5)


def test_fgsm_on_a_linear_model_is_the_closed_form() -> None:
    # Two classes: -d log p_y / dx = (1 - p_y) (w_other - w_y), whose sign needs no p_y.
    model = _linear(1, classes=2)
    x = torch.rand(12, 1, 4, 4)
    y = torch.randint(0, 2, (12,))
    weight = model[1].weight.detach()
    direction = (weight[1 - y] - weight[y]).sign().view(12, 1, 4, 4)
    expected = (x + 0.2 * direction).clamp(0, 1)
    assert torch.equal(fgsm(mean_log_probs([model]), x, y, 0.2), expected)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_defining_properties(name: str, lenet5, batch) -> None:
    x, y = batch
    forward = mean_log_probs([lenet5])
    epsilon = 0.1
    x_adv = run_attack(name, forward, x, y, epsilon)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= epsilon + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    clean, attacked = _losses(forward, x, y), _losses(forward, x_adv, y)
    assert attacked.mean() > clean.mean() + 0.3
    assert (attacked >= clean - 1e-6).float().mean() >= 0.95
    assert torch.equal(run_attack(name, forward, x, y, epsilon), x_adv)  # deterministic
    assert torch.equal(run_attack(name, forward, x, y, epsilon, batch_size=7), x_adv)


@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("mc_samples", [0, 3])
def test_attacks_leave_parameters_and_modes_alone(name: str, mc_samples: int, lenet5, batch
                                                  ) -> None:
    x, y = batch[0][:16], batch[1][:16]
    options = {} if name == "fgsm" else {"steps": 2}
    lenet5.train()
    try:
        run_attack(name, mean_log_probs([lenet5], mc_samples), x, y, 0.1, **options)
        assert all(_modes(lenet5))
    finally:
        lenet5.eval()
    run_attack(name, mean_log_probs([lenet5], mc_samples), x, y, 0.1, **options)
    assert not any(_modes(lenet5))
    assert all(p.grad is None for p in lenet5.parameters())


def test_iterative_attacks_reach_at_least_fgsm_loss(lenet5, batch) -> None:
    x, y = batch
    forward = mean_log_probs([lenet5])
    one_step = _losses(forward, fgsm(forward, x, y, 0.1), y).mean()
    for attack in (bim, pgd, mim):
        assert _losses(forward, attack(forward, x, y, 0.1), y).mean() >= one_step


def test_mim_without_momentum_is_bim(lenet5, batch) -> None:
    x, y = batch
    forward = mean_log_probs([lenet5])
    plain = bim(forward, x, y, 0.1, steps=5, step_size=0.03)
    assert torch.equal(mim(forward, x, y, 0.1, steps=5, step_size=0.03, decay=0.0), plain)
    assert not torch.equal(mim(forward, x, y, 0.1, steps=5, step_size=0.03, decay=1.0), plain)


def test_pgd_start_is_random_and_seeded(lenet5, batch) -> None:
    x, y = batch[0][:20], batch[1][:20]
    forward = mean_log_probs([lenet5])

    def attack(seed: int) -> torch.Tensor:
        return pgd(forward, x, y, 0.1, steps=3, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(attack(1), attack(1))
    assert not torch.equal(attack(1), attack(2))
    assert not torch.equal(attack(1), bim(forward, x, y, 0.1, steps=3))


@pytest.mark.parametrize("name", list(ATTACKS))
def test_epsilon_03_flips_most_correct_predictions(name: str, lenet5, batch) -> None:
    x, y = batch
    forward = mean_log_probs([lenet5])
    with torch.no_grad():
        before = forward(x).argmax(1)
        after = forward(run_attack(name, forward, x, y, 0.3)).argmax(1)
    assert (before == y).float().mean() > 0.9
    assert success_rate(y, before, after) > 0.8


def test_ensemble_mc_attack_runs_and_hurts(lenet5, batch) -> None:
    x, y = batch[0][:20], batch[1][:20]
    torch.manual_seed(1)
    other = build("lenet5", dropout=0.1).eval()  # an untrained member is fine here
    forward = mean_log_probs([lenet5, other], mc_samples=3)
    torch.manual_seed(0)
    x_adv = pgd(forward, x, y, 0.2, steps=3)
    assert (x_adv - x).abs().max() <= 0.2 + 1e-6
    torch.manual_seed(0)
    assert _losses(forward, x_adv, y).mean() > _losses(forward, x, y).mean()


def test_run_attack_refuses_bad_arguments(batch) -> None:
    x, y = batch[0][:4], batch[1][:4]
    forward = mean_log_probs([build("lenet5")])
    with pytest.raises(ConfigError, match="fgsm, bim, pgd, mim"):
        run_attack("cw", forward, x, y, 0.1)
    for epsilon in (0, -0.1, 1.5, math.nan, True):
        with pytest.raises(ConfigError, match="epsilon"):
            run_attack("pgd", forward, x, y, epsilon)
    with pytest.raises(ConfigError, match="decay"):
        run_attack("bim", forward, x, y, 0.1, decay=0.5)
    with pytest.raises(ConfigError, match="steps"):
        run_attack("bim", forward, x, y, 0.1, steps=0)
    with pytest.raises(DataError, match="y"):
        run_attack("fgsm", forward, x, y[:3], 0.1)
    with pytest.raises(DataError, match="values must lie in"):
        run_attack("fgsm", forward, x * 2, y, 0.1)


def test_same_norm_noise_matches_the_perturbation_norm() -> None:
    x = torch.full((6, 1, 28, 28), 0.5)
    perturbation = 0.1 * (2 * torch.rand(6, 1, 28, 28) - 1)
    perturbation[[2, 4]] = 0.0
    x_adv = x + perturbation
    noisy = same_norm_noise(x, x_adv, torch.Generator().manual_seed(0))
    norms = (noisy - x).flatten(1).norm(dim=1)
    assert torch.allclose(norms, perturbation.flatten(1).norm(dim=1), rtol=1e-4)
    assert torch.equal(noisy[[2, 4]], x[[2, 4]])
    assert not torch.allclose(noisy, x_adv)
    again = same_norm_noise(x, x_adv, torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)
    with pytest.raises(DataError, match="shape"):
        same_norm_noise(x, x_adv[:3])


def test_success_counts_only_inputs_correct_before() -> None:
    labels = torch.tensor([0, 1, 2, 3])
    before = torch.tensor([0, 1, 2, 0])  # input 3 was already wrong
    after = torch.tensor([1, 1, 0, 0])
    assert success(labels, before, after).tolist() == [True, False, True, False]
    assert success_rate(labels, before, after) == pytest.approx(2 / 3)
    assert math.isnan(success_rate(labels, labels + 1, labels))


def test_detection_table_hand_cases() -> None:
    clean = {"entropy": torch.tensor([0.1, 0.2, 0.3]), "mi": torch.tensor([0.1, 0.4, 0.0])}
    noisy = {"entropy": torch.tensor([0.2, 0.3]), "mi": torch.tensor([0.1, 0.2])}
    adversarial = {"entropy": torch.tensor([0.5, 0.9]), "mi": torch.tensor([0.3, 0.5])}
    table = detection_table(clean, noisy, adversarial, torch.tensor([False, False]))
    assert len(table) == 8
    assert {"negatives", "subset", "measure", "auroc"} <= set(table.columns)
    rows = table.set_index(["negatives", "subset", "measure"])
    for negatives in ("clean", "noise"):
        assert rows.loc[(negatives, "all", "entropy"), "auroc"] == 1.0
        assert np.isnan(rows.loc[(negatives, "successful", "entropy"), "auroc"])
        assert rows.loc[(negatives, "successful", "entropy"), "n_positives"] == 0
    # clean mi [0.1, 0.4, 0.0] vs adversarial [0.3, 0.5]: 5 of 6 pairs ranked right.
    assert rows.loc[("clean", "all", "mi"), "auroc"] == pytest.approx(5 / 6)
    assert rows.loc[("noise", "all", "mi"), "fpr95"] == 0.0

    partial = detection_table(clean, noisy, adversarial, torch.tensor([False, True]))
    rows = partial.set_index(["negatives", "subset", "measure"])
    assert rows.loc[("clean", "successful", "mi"), "auroc"] == 1.0  # only the 0.5 is left
    assert rows.loc[("clean", "successful", "mi"), "n_positives"] == 1


def test_detection_table_refuses_mismatched_inputs() -> None:
    scores = {"entropy": torch.rand(3)}
    with pytest.raises(DataError, match="same measures"):
        detection_table(scores, {"mi": torch.rand(3)}, scores, torch.ones(3, dtype=torch.bool))
    with pytest.raises(DataError, match="boolean mask"):
        detection_table(scores, scores, scores, torch.ones(2, dtype=torch.bool))
    with pytest.raises(DataError, match="NaN"):  # checked by ood.detection_metrics
        detection_table(scores, {"entropy": torch.tensor([0.1, math.nan])}, scores,
                        torch.ones(3, dtype=torch.bool))
