"""A variational auto-encoder whose small latent space can be mapped by a classifier's uncertainty.

Seed 003 (Smith & Gal 2018) decodes a grid over a 2-D latent space and scores every decoded
image with a classifier, to show where the classifier is confident far from the data. This is
their fully connected VAE: 784-400-256 ELU encoder to (mu, log sigma), mirrored decoder with a
Bernoulli (sigmoid) output. It is not a classifier, so it lives outside the zoo's registry; it
trains with ``trustmap.training.fit(..., objective=vae_loss)``.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trustmap.data.dataset import check_images
from trustmap.errors import ModelError, did_you_mean
from trustmap.models.base import INPUT_SIZE, sequential

NAME = "vae"
"""The ``name`` in a VAE's build_args, which tells its checkpoints from a classifier's."""


def _positive_integer(what: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ModelError(f"vae: {what} must be an integer >= 1, got {value!r}")
    return int(value)


class VAE(nn.Module):
    """Flatten → 400 → 256 → (mu, log sigma) encoder; latent → 256 → 400 → pixels decoder.

    ``forward`` samples z with the reparameterisation trick in train mode (torch's global RNG,
    so a seeded run is reproducible) and uses z = mu in eval mode, so evaluation is
    deterministic. ``build_args`` is JSON-able and ``build(**build_args)`` rebuilds it.
    """

    def __init__(self, latent: int = 2, in_channels: int = 1) -> None:
        super().__init__()
        self.latent = _positive_integer("latent", latent)
        self.in_channels = _positive_integer("in_channels", in_channels)
        pixels = self.in_channels * INPUT_SIZE * INPUT_SIZE
        self.encoder = sequential(
            flatten=nn.Flatten(), fc1=nn.Linear(pixels, 400), elu1=nn.ELU(),
            fc2=nn.Linear(400, 256), elu2=nn.ELU(), fc3=nn.Linear(256, 2 * self.latent))
        self.decoder = sequential(
            fc1=nn.Linear(self.latent, 256), elu1=nn.ELU(), fc2=nn.Linear(256, 400),
            elu2=nn.ELU(), fc3=nn.Linear(400, pixels))
        self.build_args: dict[str, Any] = {"name": NAME, "latent": self.latent,
                                           "in_channels": self.in_channels}

    def extra_repr(self) -> str:
        return f"latent={self.latent}, in_channels={self.in_channels}"

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma), each [N, latent], of the Gaussian posterior of images ``x``."""
        check_images(x.detach(), "VAE input")  # no grad: it only reads values
        expected = (self.in_channels, INPUT_SIZE, INPUT_SIZE)
        if tuple(x.shape[1:]) != expected:
            shape = ", ".join(map(str, expected))
            raise ModelError(f"this VAE takes images [N, {shape}], got {list(x.shape)}; bring "
                             "the data to that shape, or build the VAE with the data's number "
                             "of channels as in_channels")
        mu, log_sigma = self.encoder(x).chunk(2, dim=1)
        return mu, log_sigma

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid images [N, C, 28, 28]: the Bernoulli logits a stable BCE needs."""
        if not isinstance(z, torch.Tensor) or z.ndim != 2 or z.shape[1] != self.latent:
            got = list(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ModelError(f"latent codes must be a tensor [N, {self.latent}], got {got}; "
                             "stack the points to decode as rows")
        return self.decoder(z).view(len(z), self.in_channels, INPUT_SIZE, INPUT_SIZE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images [N, C, 28, 28] in [0, 1] decoded from latent codes ``z`` [N, latent]."""
        return torch.sigmoid(self.decode_logits(z))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction logits, mu, log sigma); z is sampled in train mode, mu in eval."""
        mu, log_sigma = self.encode(x)
        z = mu + log_sigma.exp() * torch.randn_like(mu) if self.training else mu
        return self.decode_logits(z), mu, log_sigma


def vae_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Negative ELBO per image, averaged over the batch; ``y`` (labels) is ignored.

    Reconstruction is the Bernoulli log-likelihood summed over pixels (BCE on logits, for
    stability); the KL term is that of N(mu, sigma²) from the N(0, 1) prior, in closed form.
    Its signature is that of ``trustmap.training.fit``'s ``objective``.
    """
    logits, mu, log_sigma = model(x)
    reconstruction = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1)
    kl = -0.5 * (1 + 2 * log_sigma - mu.square() - (2 * log_sigma).exp()).sum(1)
    return (reconstruction.sum(1) + kl).mean()


def build(**kwargs: Any) -> VAE:
    """A freshly initialised VAE (weights from torch's global seed); ``build(**vae.build_args)``
    rebuilds one, and bad arguments raise ModelError."""
    known = ("name", "latent", "in_channels")
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        hint = did_you_mean(unknown[0], known)
        raise ModelError(f"vae does not take {', '.join(map(repr, unknown))}{hint}; it takes "
                         "latent and in_channels")
    name = kwargs.pop("name", NAME)
    if name != NAME:
        raise ModelError(f"these arguments describe model {name!r}, not a VAE; rebuild it with "
                         "trustmap.models.build instead")
    return VAE(**kwargs)
