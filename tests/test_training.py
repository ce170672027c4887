from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trustmap.errors import CheckpointError, ConfigError
from trustmap.models import build
from trustmap.training import (
    RunSpec,
    TrainConfig,
    augment_batch,
    evaluate_logits,
    fit,
    fit_ensemble,
    forward_in_batches,
    load_ensemble,
    member_seeds,
    split_validation,
)

TINY = TrainConfig(epochs=1, batch_size=32, lr=2e-3)


def test_member_seeds_are_reproducible_and_distinct() -> None:
    seeds = member_seeds(7, 5)
    assert seeds == member_seeds(7, 5)
    assert len(set(seeds)) == 5
    assert seeds[:3] == member_seeds(7, 3)  # adding members keeps the earlier ones
    assert seeds != member_seeds(8, 5)


def test_fit_learns_real_digits_and_is_reproducible(mnist_small, mnist_test) -> None:
    results, weights = [], []
    for _ in range(2):
        torch.manual_seed(3)
        model = build("lenet")
        results.append(fit(model, mnist_small, mnist_test, TINY, seed=11, progress=False))
        weights.append(model.state_dict())
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
    history = results[0].history
    assert len(history) == 1 and history[0].val_accuracy is not None
    assert history[0].val_accuracy > 0.6  # chance is 0.1
    assert history[0].images_per_second > 0


def test_evaluate_logits_matches_formulas() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    labels = torch.tensor([0, 0, 0])
    accuracy, nll = evaluate_logits(logits, labels)
    assert accuracy == pytest.approx(2 / 3)
    expected = -torch.log_softmax(logits, 1)[:, 0].mean()
    assert nll == pytest.approx(float(expected))


def test_forward_in_batches_equals_one_pass(mnist_small) -> None:
    model = build("lenet").eval()
    with torch.no_grad():
        whole = model(mnist_small.images[:70])
    assert torch.allclose(forward_in_batches(model, mnist_small.images[:70], 16), whole,
                          atol=1e-5)


def test_split_validation_is_stratified_and_disjoint(mnist_small) -> None:
    kept, held = split_validation(mnist_small, 0.2, seed=0)
    assert len(kept) + len(held) == len(mnist_small)
    assert torch.bincount(held.labels).tolist() == [12] * 10
    joined = torch.cat([kept.images, held.images]).flatten(1)
    assert torch.unique(joined, dim=0).shape[0] == torch.unique(
        mnist_small.images.flatten(1), dim=0).shape[0]
    assert "held out" in held.provenance["transforms"][-1]
    again = split_validation(mnist_small, 0.2, seed=0)[1]
    assert torch.equal(again.images, held.images)
    assert split_validation(mnist_small, 0.0, seed=0)[1] is None
    with pytest.raises(ConfigError, match="val_fraction"):
        split_validation(mnist_small, 1.5, seed=0)


def test_train_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="sgd, adam"):
        TrainConfig(optimizer="rmsprop-ish")
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="lr"):
        TrainConfig(lr=-1)


def _spec(members: int = 2) -> RunSpec:
    return RunSpec(model="lenet", members=members, seed=5, train=TINY, val_fraction=0.1)


def test_ensemble_checkpoints_restore_exactly_and_resume(mnist_small, tmp_path: Path) -> None:
    out = tmp_path / "run"
    trained = []
    run = fit_ensemble(_spec(), mnist_small, out, progress=False,
                       on_member=lambda i, r: trained.append((i, r is not None)))
    assert trained == [(0, True), (1, True)]
    x = mnist_small.images[:50]
    before = [forward_in_batches(m, x) for m in run.members]
    assert not torch.equal(before[0], before[1])  # independently initialised members

    restored = load_ensemble(out)
    for logits, model in zip(before, restored.members, strict=True):
        assert torch.equal(forward_in_batches(model, x), logits)
    meta = json.loads((out / "member-1.json").read_text())
    assert meta["seed"] == member_seeds(5, 2)[1]
    assert meta["model"]["name"] == "lenet"
    assert restored.data["name"] == "mnist-embedded"
    assert restored.data["train_size"] + restored.data["val_size"] == len(mnist_small)

    # An interrupted run: member 1 never finished. Resuming trains only member 1, and the
    # derived seed makes it come out exactly as before.
    (out / "member-1.json").unlink()
    (out / "member-1.safetensors").unlink()
    with pytest.raises(CheckpointError, match="resume"):
        load_ensemble(out)
    resumed = []
    rerun = fit_ensemble(_spec(), mnist_small, out, progress=False,
                         on_member=lambda i, r: resumed.append((i, r is not None)))
    assert resumed == [(0, False), (1, True)]
    assert torch.equal(forward_in_batches(rerun.members[1], x), before[1])


def test_resume_with_other_settings_is_refused(mnist_small, tmp_path: Path) -> None:
    fit_ensemble(_spec(members=1), mnist_small, tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="another --out"):
        fit_ensemble(RunSpec(model="lenet5", members=1, seed=5, train=TINY), mnist_small,
                     tmp_path, progress=False)


def test_damaged_checkpoints_give_checkpoint_errors(mnist_small, tmp_path: Path) -> None:
    fit_ensemble(_spec(members=1), mnist_small, tmp_path, progress=False)
    weights = tmp_path / "member-0.safetensors"
    intact = weights.read_bytes()
    weights.write_bytes(intact[: len(intact) // 2])
    with pytest.raises(CheckpointError, match="member-0.safetensors"):
        load_ensemble(tmp_path)
    weights.write_bytes(intact)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_ensemble(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_ensemble(tmp_path / "nowhere")
    assert not list(tmp_path.glob("*.tmp"))


def test_shift_augmentation_moves_each_image_by_at_most_two_pixels() -> None:
    x = torch.zeros(200, 1, 28, 28)
    x[:, 0, 10, 12] = 1.0
    shifted = augment_batch(x, ("shift",), torch.Generator().manual_seed(0))
    where = shifted[:, 0].flatten(1).argmax(1)
    rows, cols = where // 28 - 10, where % 28 - 12
    assert shifted.sum() == 200  # nothing lost: the pixel stays inside the image
    assert rows.abs().max() == 2 and cols.abs().max() == 2
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) == 25  # all 5x5 offsets
    again = augment_batch(x, ("shift",), torch.Generator().manual_seed(0))
    assert torch.equal(shifted, again)


def test_flip_augmentation_mirrors_about_half_the_images() -> None:
    x = torch.rand(400, 1, 28, 28)
    flipped = augment_batch(x, ("flip",), torch.Generator().manual_seed(1))
    mirrored = (flipped == x.flip(-1)).flatten(1).all(1)
    unchanged = (flipped == x).flatten(1).all(1)
    assert bool((mirrored | unchanged).all())
    assert 150 < int(mirrored.sum()) < 250


def test_cosine_schedule_decays_to_zero() -> None:
    config = TrainConfig(lr=0.1, schedule="cosine")
    optimizer = config.make_optimizer(iter([torch.nn.Parameter(torch.zeros(1))]))
    scheduler = config.make_scheduler(optimizer, steps=10)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(0.1)
    assert rates[5] == pytest.approx(0.05)  # 0.1 * (1 + cos(pi/2)) / 2
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ConfigError, match="flip only suits"):
        TrainConfig(augment=("rotate",))


def test_fit_with_an_objective_trains_as_given_and_records_val_loss(mnist_small) -> None:
    # Cross-entropy given as an objective must train exactly like the default, and its mean on
    # val is the NLL that the default path records.
    train, val = mnist_small.subset(torch.arange(0, 600, 3)), mnist_small.subset(slice(1, 100, 2))
    config = TrainConfig(epochs=1, batch_size=32, lr=2e-3, augment=("shift",))
    results, weights = [], []
    for objective in (None, lambda model, x, y: torch.nn.functional.cross_entropy(model(x), y)):
        torch.manual_seed(3)
        model = build("lenet")
        results.append(fit(model, train, val, config, seed=11, progress=False,
                           objective=objective))
        weights.append(model.state_dict())
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
    default, custom = results[0].history[0], results[1].history[0]
    assert default.train_loss == custom.train_loss
    assert default.val_loss is None and "val_loss" not in results[0].metrics
    assert custom.val_accuracy is None and custom.val_nll is None
    assert custom.val_loss == pytest.approx(default.val_nll, rel=1e-5)
    assert results[1].metrics["val_loss"] == custom.val_loss
