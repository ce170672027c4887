"""LRP through a residual block against a hand computation with explicit tensor formulas.

The block is the zoo's BasicBlock (conv-BN-relu-conv-BN plus an identity or a 1x1 conv-BN
projection skip, the sum, relu), followed by average pooling and a dense layer. The reference
folds each BatchNorm into its convolution by hand, writes every contribution ``a_i w_ij`` of
every layer out over unfolded patches, splits the relevance of the residual sum between the
branches in proportion to their values (the z-rule at the addition, as the LRP literature and
Zennit's residual canonizer do), and uses no hooks and no trustmap LRP code.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trustmap.explain.canonize import merged_batchnorm
from trustmap.explain.lrp import WEIGHTED, AlphaBeta, Epsilon, Flat, Rule, ZBox, propagate
from trustmap.models.resnet import BasicBlock

EPS = 1e-6
Share = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(contributions [N, J, I, L], bias [J], output relevance [N, J, L]) -> shared [N, J, I, L]."""


def stab(z: torch.Tensor, eps: float) -> torch.Tensor:
    return z + eps * (2 * (z >= 0).to(z.dtype) - 1)


def epsilon_share(eps: float = EPS) -> Share:
    def share(z: torch.Tensor, b: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        total = z.sum(2) + b[None, :, None]
        return z * (r / stab(total, eps))[:, :, None]
    return share


def alpha_beta_share(alpha: float, beta: float) -> Share:
    def share(z: torch.Tensor, b: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        up, down = z.clamp(min=0), z.clamp(max=0)  # the bias is left out of both
        return (alpha * up * (r / stab(up.sum(2), EPS))[:, :, None]
                - beta * down * (r / stab(down.sum(2), EPS))[:, :, None])
    return share


def fold(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm folded into the convolution before it: W s, (b - mean) s + beta."""
    s = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(s)
    return conv.weight * s[:, None, None, None], (bias - norm.running_mean) * s + norm.bias


def conv_step(a: torch.Tensor, w: torch.Tensor, b: torch.Tensor, conv: nn.Conv2d,
              r_out: torch.Tensor | None, share: Share) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, input relevance or None): every contribution a_i w_ij over unfolded patches."""
    size, stride, padding = conv.kernel_size, conv.stride, conv.padding
    patches = F.unfold(a, size, padding=padding, stride=stride)  # [N, I, L]
    z = w.flatten(1)[None, :, :, None] * patches[:, None]  # [N, J, I, L]
    rows = (a.shape[2] + 2 * padding[0] - size[0]) // stride[0] + 1
    out = (z.sum(2) + b[None, :, None]).unflatten(2, (rows, -1))
    if r_out is None:
        return out, torch.empty(0)
    shared = share(z, b, r_out.flatten(2)).sum(1)  # [N, I, L]
    return out, F.fold(shared, a.shape[2:], size, padding=padding, stride=stride)


def reference(model: nn.Sequential, x: torch.Tensor, target: torch.Tensor,
              share: Share) -> dict[str, torch.Tensor]:
    """Input relevance and the relevance at the block's output and sum, all by hand."""
    block, fc, stem = model.block, model.fc, getattr(model, "stem", None)
    pixels = x  # the model's input; x is the block's
    if stem is not None:
        x = conv_step(pixels, stem.weight, stem.bias, stem, None, share)[0].clamp(min=0)
    w1, b1 = fold(block.conv1, block.bn1)
    w2, b2 = fold(block.conv2, block.bn2)
    h1 = conv_step(x, w1, b1, block.conv1, None, share)[0].clamp(min=0)
    residual = conv_step(h1, w2, b2, block.conv2, None, share)[0]
    if isinstance(block.shortcut, nn.Identity):
        skip = x
    else:
        ws, bs = fold(block.shortcut.conv, block.shortcut.bn)
        skip = conv_step(x, ws, bs, block.shortcut.conv, None, share)[0]
    total = residual + skip
    out = total.clamp(min=0)
    pooled = out.mean((2, 3))
    logits = pooled @ fc.weight.T + fc.bias
    # dense layer: R at its output is the target logit
    picked = target[:, None]
    r_logits = torch.zeros_like(logits).scatter_(1, picked, logits.gather(1, picked))
    z = (pooled[:, None, :] * fc.weight[None])[..., None]  # [N, K, F, 1]
    r_pooled = share(z, fc.bias, r_logits[..., None]).sum(1)[..., 0]
    # average pooling: each position's share of the mean; relu: relevance passes
    summed = out.sum((2, 3))
    r_out = out * torch.where(summed == 0, 0.0, r_pooled / summed)[:, :, None, None]
    # the residual sum: each branch in proportion to its value (z-rule, 0 where the sum is 0)
    ratio = torch.where(total == 0, 0.0, r_out / total)
    r_residual, r_skip = residual * ratio, skip * ratio
    r_h1 = conv_step(h1, w2, b2, block.conv2, r_residual, share)[1]
    r_x = conv_step(x, w1, b1, block.conv1, r_h1, share)[1]
    if isinstance(block.shortcut, nn.Identity):
        r_x = r_x + r_skip
    else:
        r_x = r_x + conv_step(x, ws, bs, block.shortcut.conv, r_skip, share)[1]
    if stem is not None:  # relu passes relevance, the stem shares it by the rule
        r_x = conv_step(pixels, stem.weight, stem.bias, stem, r_x, share)[1]
    return {"input": r_x, "block": r_out, "sum": r_residual + r_skip, "logits": logits}


def block_model(fan_in: int, fan_out: int, stride: int, biased: bool = True,
                stem: bool = False) -> nn.Sequential:
    """[conv-relu stem,] BasicBlock, average pooling, flatten, dense; random BatchNorm
    statistics, float64. Without a stem the block reads the input layer's input."""
    torch.manual_seed(fan_in + 10 * fan_out + stride)
    layers = {"stem": nn.Conv2d(fan_in, fan_in, 3, padding=1), "relu": nn.ReLU()} if stem else {}
    layers |= {"block": BasicBlock(fan_in, fan_out, stride), "pool": nn.AdaptiveAvgPool2d(1),
               "flatten": nn.Flatten(), "fc": nn.Linear(fan_out, 3)}
    model = nn.Sequential(OrderedDict(layers)).double().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_var.uniform_(0.3, 2.0)
                module.weight.normal_()
                if biased:
                    module.running_mean.normal_(0, 0.5)
                    module.bias.normal_(0, 0.5)
        if not biased:
            model.fc.bias.zero_()
    return model


def trustmap_relevance(model: nn.Sequential, x: torch.Tensor, target: torch.Tensor,
                       chosen: Rule) -> torch.Tensor:
    rules = {name: chosen for name, m in model.named_modules() if isinstance(m, WEIGHTED)}
    with merged_batchnorm(model, x[:1]) as pairs:
        assert len(pairs) == (2 if isinstance(model.block.shortcut, nn.Identity) else 3)
        return propagate(model, x, target, rules)


SKIPS = [pytest.param(4, 4, 1, id="identity-skip"), pytest.param(3, 5, 2, id="projection-skip")]
RULES = [
    pytest.param(Epsilon(epsilon=EPS), epsilon_share(), id="epsilon"),
    pytest.param(Epsilon(epsilon=0.1), epsilon_share(0.1), id="epsilon-0.1"),
    pytest.param(AlphaBeta(2.0, 1.0, epsilon=EPS), alpha_beta_share(2.0, 1.0), id="alpha2-beta1"),
    pytest.param(AlphaBeta(1.0, 0.0, epsilon=EPS), alpha_beta_share(1.0, 0.0), id="alpha1-beta0"),
]


@pytest.mark.parametrize("stem", [False, True], ids=["block-first", "after-stem"])
@pytest.mark.parametrize(("fan_in", "fan_out", "stride"), SKIPS)
@pytest.mark.parametrize(("chosen", "share"), RULES)
def test_residual_block_matches_hand_computation(fan_in, fan_out, stride, chosen, share,
                                                 stem) -> None:
    model = block_model(fan_in, fan_out, stride, stem=stem)
    x = torch.randn(3, fan_in, 8, 8, dtype=torch.float64)
    target = torch.tensor([0, 1, 2])
    with torch.no_grad():
        expected = reference(model, x, target, share)
        torch.testing.assert_close(expected["logits"], model(x), rtol=1e-12, atol=1e-12)
    actual = trustmap_relevance(model, x, target, chosen)
    torch.testing.assert_close(actual, expected["input"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("fan_in", "fan_out", "stride"), SKIPS)
@pytest.mark.parametrize(("chosen", "share"), RULES)
def test_bias_free_block_conserves_relevance(fan_in, fan_out, stride, chosen, share) -> None:
    model = block_model(fan_in, fan_out, stride, biased=False)
    x = torch.randn(3, fan_in, 8, 8, dtype=torch.float64)
    target = torch.tensor([2, 0, 1])
    with torch.no_grad():
        expected = reference(model, x, target, share)
    # the residual sum conserves exactly, whatever the rule ...
    torch.testing.assert_close(expected["sum"].sum((1, 2, 3)), expected["block"].sum((1, 2, 3)),
                               rtol=1e-12, atol=1e-12)
    if not isinstance(chosen, Epsilon) or chosen.epsilon > EPS:
        return
    # ... and with epsilon -> 0 and no biases the block conserves, in the hand computation
    # and in trustmap (alpha-beta does not where all of an output's contributions share a sign)
    logit = expected["logits"].gather(1, target[:, None])[:, 0]
    actual = trustmap_relevance(model, x, target, chosen)
    for relevance in (expected["block"], expected["input"], actual):
        torch.testing.assert_close(relevance.sum((1, 2, 3)), logit, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize(("fan_in", "fan_out", "stride"), SKIPS)
@pytest.mark.parametrize("first", [Flat(), ZBox()], ids=["flat", "zb"])
def test_every_reader_of_the_input_is_an_input_layer(fan_in, fan_out, stride, first) -> None:
    # conv1 and a projection skip both read the input: both get the input-layer rule and its
    # leaves, and an identity skip's share arrives too, so the bias-free block conserves
    model = block_model(fan_in, fan_out, stride, biased=False)
    x = torch.rand(3, fan_in, 8, 8, dtype=torch.float64)
    target = torch.tensor([0, 1, 2])
    firsts: list[str] = []

    def choose(name: str, module: nn.Module, is_input: bool) -> Rule:
        firsts.extend([name] if is_input else [])
        return first if is_input else Epsilon(epsilon=EPS)

    with merged_batchnorm(model, x[:1]):
        relevance = propagate(model, x, target, choose, bounds=(x.new_zeros(()), x.new_ones(())))
    readers = ["block.conv1"] + ([] if stride == 1 else ["block.shortcut.conv"])
    assert firsts == readers
    logit = model(x).gather(1, target[:, None])[:, 0].detach()
    torch.testing.assert_close(relevance.sum((1, 2, 3)), logit, rtol=1e-4, atol=1e-9)
