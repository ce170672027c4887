from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from trustmap.errors import CheckpointError, DataError, ModelError
from trustmap.models import vae
from trustmap.models.vae import VAE, build, vae_loss
from trustmap.training import TrainConfig, fit_vae, member_seeds, split_validation


def _tiny_images(n: int = 6, channels: int = 1) -> torch.Tensor:
    return torch.rand(n, channels, 28, 28, generator=torch.Generator().manual_seed(0))


def test_architecture_shapes_and_outputs_in_unit_interval() -> None:
    torch.manual_seed(0)
    model = VAE(latent=3, in_channels=2)
    linears = [(m.in_features, m.out_features) for m in model.modules()
               if isinstance(m, nn.Linear)]
    assert linears == [(2 * 784, 400), (400, 256), (256, 6), (3, 256), (256, 400), (400, 2 * 784)]
    assert sum(isinstance(m, nn.ELU) for m in model.modules()) == 4
    x = _tiny_images(5, channels=2)
    mu, log_sigma = model.encode(x)
    assert mu.shape == log_sigma.shape == (5, 3)
    with torch.no_grad():
        images = model.decode(torch.randn(7, 3) * 10)
    assert images.shape == (7, 2, 28, 28)
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    z = torch.randn(4, 3)
    assert torch.allclose(model.decode(z), torch.sigmoid(model.decode_logits(z)))


def test_eval_mode_uses_the_mean_and_train_mode_samples() -> None:
    torch.manual_seed(0)
    model = VAE().eval()
    x = _tiny_images()
    logits, mu, log_sigma = model(x)
    assert torch.equal(model(x)[0], logits)  # deterministic
    assert torch.equal(logits, model.decode_logits(mu))
    model.train()
    torch.manual_seed(1)
    sampled = model(x)[0]
    assert not torch.allclose(sampled, logits)
    torch.manual_seed(1)  # the reparameterisation draws from torch's global RNG
    eps = torch.randn_like(mu)
    assert torch.allclose(sampled, model.decode_logits(mu + log_sigma.exp() * eps), atol=1e-6)
    torch.manual_seed(1)
    assert torch.equal(model(x)[0], sampled)


def test_loss_equals_the_negative_elbo_formula() -> None:
    torch.manual_seed(0)
    model = VAE(latent=2).eval()  # z = mu: the reconstruction term is deterministic
    x = _tiny_images(3)
    with torch.no_grad():
        mu, log_sigma = model.encode(x)
        p = model.decode(mu).double()
        xd = x.double()
        bce = -(xd * p.log() + (1 - xd) * (1 - p).log()).flatten(1).mean(1) * 784
        sigma2 = (2 * log_sigma.double()).exp()
        kl = 0.5 * (sigma2 + mu.double() ** 2 - 1 - sigma2.log()).sum(1)
        expected = float((bce + kl).mean())
        loss = vae_loss(model, x, torch.zeros(3, dtype=torch.long))
    assert loss.ndim == 0
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_build_args_round_trip_and_bad_arguments() -> None:
    model = VAE(latent=4)
    args = json.loads(json.dumps(model.build_args))
    assert args == {"name": "vae", "latent": 4, "in_channels": 1}
    rebuilt = build(**args)
    assert rebuilt.build_args == model.build_args
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()}
    with pytest.raises(ModelError, match="latent must be an integer"):
        build(latent=0)
    with pytest.raises(ModelError, match="in_channels"):
        build(in_channels=1.5)
    with pytest.raises(ModelError, match="did you mean 'latent'"):
        build(latnet=2)
    with pytest.raises(ModelError, match="trustmap.models.build"):
        build(name="lenet")


def test_bad_inputs_raise_errors_with_advice() -> None:
    model = VAE()
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        model.encode(_tiny_images() * 3)
    with pytest.raises(DataError, match="unsqueeze"):
        model.encode(torch.rand(2, 28, 28))
    with pytest.raises(ModelError, match="in_channels"):
        model.encode(_tiny_images(channels=3))
    with pytest.raises(ModelError, match=r"\[N, 2\]"):
        model.decode(torch.zeros(4, 3))


def test_fit_vae_learns_resumes_and_refuses_other_settings(mnist_small, tmp_path: Path) -> None:
    # Labels play no part beyond stratifying the hold-out: give every image the same one.
    same_label = torch.zeros(len(mnist_small), dtype=torch.long)
    data = dataclasses.replace(mnist_small, labels=same_label, classes=("digit",))
    data = data.subset(torch.arange(600) % 6 != 5)  # 500 images, 50 of each digit
    config = TrainConfig(epochs=2, batch_size=32, lr=2e-3)
    out = tmp_path / "vae"
    model, meta = fit_vae(data, out, config, latent=2, seed=3, progress=False)
    assert isinstance(model, VAE) and not model.training
    assert meta["model"] == {"name": "vae", "latent": 2, "in_channels": 1}
    assert [r["val_accuracy"] for r in meta["history"]] == [None, None]

    # The recorded validation loss is the mean objective on the held-out split, and it is
    # lower than that of the same VAE before training.
    val = split_validation(data, 0.1, seed=3)[1]
    assert len(val) == 50
    with torch.no_grad():
        trained_loss = float(vae_loss(model, val.images))
        torch.manual_seed(member_seeds(3, 1)[0])
        untrained_loss = float(vae_loss(vae.build(latent=2).eval(), val.images))
    assert meta["metrics"]["val_loss"] == pytest.approx(trained_loss, rel=1e-4)
    assert trained_loss < 0.8 * untrained_loss

    weights = out / "member-0.safetensors"
    stamp = weights.stat().st_mtime_ns
    z = torch.randn(9, 2)
    again, meta_again = fit_vae(data, out, config, latent=2, seed=3, progress=False)
    assert weights.stat().st_mtime_ns == stamp  # reloaded, not trained again
    assert meta_again == meta
    assert torch.equal(again.decode(z), model.decode(z))
    assert json.loads((out / "run.json").read_text())["spec"]["model"] == "vae"

    with pytest.raises(CheckpointError, match="other settings"):
        fit_vae(data, out, config, latent=3, seed=3, progress=False)
