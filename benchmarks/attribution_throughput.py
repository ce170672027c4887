"""Maps per second of every attribution method over a 5-member ensemble, side by side with
Captum on the same models and with a one-input-at-a-time loop like seed 000's.

trustmap explains every member of ``Ensemble(members)`` with ``attribute_samples`` (inputs in
chunks of 256); Captum runs its own class for the same method on the same members and chunks;
the loop calls trustmap's method on one input at a time, as seed 000's notebook did (on the
first ``--loop-n`` inputs: the rate is per map, so a subset measures it). LRP is also timed
against one forward + backward pass of the same models in the same (channels-last) layout
(the goal: at most 3x). Runs
interleave and the median of the repeats is printed, so all columns see the same machine load.

    .venv/bin/python benchmarks/attribution_throughput.py
    .venv/bin/python benchmarks/attribution_throughput.py --methods gradient,gradcam --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from captum import attr
from torch import nn

from trustmap.data import load
from trustmap.explain.aggregate import attribute_samples
from trustmap.explain.core import module_named
from trustmap.explain.methods import METHODS, get
from trustmap.models import build, channels_last, to_channels_last
from trustmap.predictive import Ensemble

CHUNK = 256


def _gradcam(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    layer = module_named(model, model.gradcam_layer)
    maps = attr.LayerGradCam(model, layer).attribute(x, target, relu_attributions=True)
    return attr.LayerAttribution.interpolate(maps, x.shape[-2:], interpolate_mode="bilinear")


CAPTUM: dict[str, Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "gradient": lambda m, x, t: attr.Saliency(m).attribute(x, t, abs=False),
    "gradient-x-input": lambda m, x, t: attr.InputXGradient(m).attribute(x, t),
    "integrated-gradients": lambda m, x, t: attr.IntegratedGradients(m).attribute(
        x, baselines=0.0, target=t, n_steps=32, method="gausslegendre"),
    "smoothgrad": lambda m, x, t: attr.NoiseTunnel(attr.Saliency(m)).attribute(
        x, nt_type="smoothgrad", nt_samples=16, stdevs=0.15, target=t, abs=False),
    "vargrad": lambda m, x, t: attr.NoiseTunnel(attr.Saliency(m)).attribute(
        x, nt_type="vargrad", nt_samples=16, stdevs=0.15, target=t, abs=False),
    "guided-backprop": lambda m, x, t: attr.GuidedBackprop(m).attribute(x, t),
    "deconvnet": lambda m, x, t: attr.Deconvolution(m).attribute(x, t),
    "gradcam": _gradcam,
    "guided-gradcam": lambda m, x, t: attr.GuidedGradCam(
        m, module_named(m, m.gradcam_layer)).attribute(x, t),
    "occlusion": lambda m, x, t: attr.Occlusion(m).attribute(
        x, sliding_window_shapes=(1, 4, 4), strides=(1, 2, 2), baselines=0.0, target=t),
}
"""Captum's class for each method, with the options trustmap's defaults use."""


def _seconds(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _captum(method: str, members: list[nn.Module], x: torch.Tensor, target: torch.Tensor
            ) -> None:
    for member in members:
        for part, part_target in zip(x.split(CHUNK), target.split(CHUNK), strict=True):
            CAPTUM[method](member, part, part_target)


def _loop(method: str, members: list[nn.Module], x: torch.Tensor, target: torch.Tensor) -> None:
    function = get(method)
    for member in members:
        for i in range(len(x)):
            function(member, x[i:i + 1], target[i:i + 1])


def _forward_backward(members: list[nn.Module], x: torch.Tensor, target: torch.Tensor) -> None:
    """One forward and one backward to the input, in the layout trustmap explains in."""
    for member in members:
        with channels_last(member):
            for part, part_target in zip(x.split(CHUNK), target.split(CHUNK), strict=True):
                leaf = to_channels_last(part).requires_grad_()
                member(leaf).gather(1, part_target[:, None]).sum().backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--n", type=int, default=1000, help="inputs explained per member")
    parser.add_argument("--loop-n", type=int, default=50,
                        help="inputs of the one-at-a-time loop (a rate per map)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    for method in methods:
        get(method)
    x = load("mnist-embedded", "test").images[: args.n]
    members = []
    for seed in range(args.members):
        torch.manual_seed(seed)
        members.append(build("lenet").eval())
    for p in (p for m in members for p in m.parameters()):
        p.requires_grad_(False)  # as a trained, deployed model: no weight gradients
    ensemble = Ensemble(members)
    target = ensemble.predict(x).predicted
    maps = args.members * len(x)
    loop_maps = args.members * min(args.loop_n, len(x))
    print(f"{args.members} x lenet, {len(x)} inputs, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}; maps/s (higher is better)")
    print(f"{'method':<28}{'trustmap':>10}{'captum':>10}{'ratio':>8}{'loop':>10}{'ratio':>8}")
    fb = [_seconds(lambda: _forward_backward(members, x, target)) for _ in range(args.repeats)]
    lrp_rows = []
    for method in methods:
        ours, theirs, loop = [], [], []
        for _ in range(args.repeats):
            ours.append(_seconds(lambda m=method: attribute_samples(m, ensemble, x, target,
                                                                     batch_size=CHUNK)))
            if method in CAPTUM:
                theirs.append(_seconds(lambda m=method: _captum(m, members, x, target)))
            loop.append(_seconds(lambda m=method: _loop(m, members, x[: args.loop_n],
                                                        target[: args.loop_n])))
        rate = maps / statistics.median(ours)
        loop_rate = loop_maps / statistics.median(loop)
        captum = f"{maps / statistics.median(theirs):>10,.0f}" if theirs else f"{'-':>10}"
        ratio = (f"{statistics.median(theirs) / statistics.median(ours):>8.2f}" if theirs
                 else f"{'-':>8}")
        print(f"{method:<28}{rate:>10,.0f}{captum}{ratio}{loop_rate:>10,.0f}"
              f"{rate / loop_rate:>8.1f}")
        if method.startswith("lrp-"):
            lrp_rows.append((method, statistics.median(ours) / statistics.median(fb)))
    if lrp_rows:
        print(f"\none forward + backward of all members: {statistics.median(fb):.3f} s; "
              "LRP time as a multiple of it (goal <= 3):")
        for method, multiple in lrp_rows:
            print(f"  {method:<30}{multiple:.2f}x")


if __name__ == "__main__":
    main()
