"""Maps per second of seed 002's relevance methods on the six recurrent models, batched and,
for LRP, side by side with the same LRP run one input at a time.

Each architecture is built untrained (seeded, eval mode) and explains the first ``--n`` 28x84
sequences (12 steps) of mnist-embedded-3-maj for its predicted class, in chunks of 256. Every
method's time is also given as a multiple of the sensitivity pass (one forward + one backward
of the same chunks), and LRP is run once more one input at a time, a Python loop over the first
``--loop-n`` inputs (a rate per map, so a subset measures it), to show what batching the
explicit backward over samples gains. After a warm-up pass on the first chunk, runs interleave
and the median of the repeats is printed, so all columns see the same machine load. On a machine
whose cores are busy with other work, ``--threads 1`` gives steadier numbers (threads that wait
for a busy core stall every operation).

    .venv/bin/python benchmarks/recurrent_relevance_throughput.py
    .venv/bin/python benchmarks/recurrent_relevance_throughput.py --quick
    .venv/bin/python benchmarks/recurrent_relevance_throughput.py --models lstm,gru --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from trustmap.data import load
from trustmap.explain.lrp_recurrent import METHODS, relevance
from trustmap.models import build
from trustmap.models.recurrent import ARCHITECTURES

CHUNK = 256


def _seconds(work: Callable[..., object], *args: object) -> float:
    started = time.perf_counter()
    work(*args)
    return time.perf_counter() - started


def _batched(method: str, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> None:
    for part, part_target in zip(x.split(CHUNK), target.split(CHUNK), strict=True):
        relevance(method, model, part, part_target)


def _loop(method: str, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> None:
    for i in range(len(x)):
        relevance(method, model, x[i:i + 1], target[i:i + 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="inputs explained per model")
    parser.add_argument("--loop-n", type=int, default=20,
                        help="inputs of the one-at-a-time LRP loop (a rate per map)")
    parser.add_argument("--models", default=",".join(ARCHITECTURES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 64 inputs, a loop of 4, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.n, args.loop_n, args.repeats = 64, 4, 1
    torch.set_num_threads(args.threads)
    names = [name for name in args.models.split(",") if name]
    unknown = sorted(set(names) - set(ARCHITECTURES))
    if unknown:
        parser.error(f"unknown models {', '.join(unknown)}; choose from {', '.join(ARCHITECTURES)}")
    x = load("mnist-embedded-3-maj", "test").images[: args.n]
    loop_n = min(args.loop_n, len(x))
    print(f"{len(x)} inputs {list(x.shape[1:])}, chunks of {CHUNK}, {torch.get_num_threads()} "
          f"threads, median of {args.repeats}; maps/s (higher is better), x f+b = time / the "
          f"sensitivity pass, loop = one input at a time ({loop_n} inputs)")
    print(f"{'model':<14}{'method':<20}{'maps/s':>10}{'x f+b':>8}{'loop':>10}{'speed-up':>10}")
    for name in names:
        torch.manual_seed(0)
        model = build(name).eval()
        for p in model.parameters():
            p.requires_grad_(False)  # as a trained, deployed model: no weight gradients
        with torch.no_grad():
            target = torch.cat([model(part).argmax(1) for part in x.split(CHUNK)])
        for method in METHODS:  # warm-up: allocator and oneDNN primitives for these shapes
            _batched(method, model, x[:CHUNK], target[:CHUNK])
        batched: dict[str, list[float]] = {method: [] for method in METHODS}
        looped: dict[str, list[float]] = {m: [] for m in METHODS if m.startswith("lrp-")}
        for _ in range(args.repeats):
            for method in METHODS:
                batched[method].append(_seconds(_batched, method, model, x, target))
                if method in looped:
                    looped[method].append(_seconds(_loop, method, model, x[:loop_n],
                                                   target[:loop_n]))
        reference = statistics.median(batched["sensitivity"])
        for method in METHODS:
            seconds = statistics.median(batched[method])
            rate = len(x) / seconds
            row = f"{name:<14}{method:<20}{rate:>10,.0f}{seconds / reference:>8.2f}"
            if method in looped:
                loop_rate = loop_n / statistics.median(looped[method])
                row += f"{loop_rate:>10,.0f}{rate / loop_rate:>10.1f}"
            print(row)


if __name__ == "__main__":
    main()
