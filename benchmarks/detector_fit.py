"""Fit and scoring time and peak memory of the feature detectors on a large synthetic bank.

The bank is seeded and synthetic: ``--n`` (1,000,000) float32 features of ``--dim`` (512)
dimensions in 10 classes, ReLU of a class mean plus unit Gaussian noise, written in chunks into
one preallocated tensor (the bank itself is the only N x D array). Each row fits a detector
through ``trustmap.evaluate.detectors.fit`` (``--batch-size`` rows at a time) or scores
``--queries`` (10,000) features with it; beside it, where one is cheap, the one-shot reference:
NumPy's covariance of the whole bank for the Gaussian fits.

Memory is the peak resident set (VmHWM of /proc/self/status, reset before each row by writing 5
to /proc/self/clear_refs, so Linux only) minus the resident set when the row started: what the
row needed on top of the bank.

    .venv/bin/python benchmarks/detector_fit.py --n 100000 --dim 256
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from trustmap.evaluate import detectors

CLASSES = 10
STATUS = Path("/proc/self/status")


def _kib(field: str) -> int:
    line = next(line for line in STATUS.read_text().splitlines() if line.startswith(field))
    return int(line.split()[1])


def measured(work: Callable[[], object]) -> tuple[object, float, float]:
    """The result, the seconds and the peak MiB above the resident set at the start."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
    start = _kib("VmRSS:")
    started = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - started
    return result, seconds, (_kib("VmHWM:") - start) / 1024


def bank(n: int, dim: int, seed: int = 0, chunk: int = 65536
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded ReLU features [n, dim] of CLASSES Gaussian classes and their labels."""
    generator = torch.Generator().manual_seed(seed)
    means = 2 * torch.randn(CLASSES, dim, generator=generator)
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    features = torch.empty(n, dim)
    for start in range(0, n, chunk):
        ys = labels[start:start + chunk]
        noise = torch.randn(len(ys), dim, generator=generator)
        torch.clamp(means[ys] + noise, min=0, out=features[start:start + chunk])
    return features, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="training features")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--skip-reference", action="store_true",
                        help="leave out NumPy's one-shot covariance (it needs ~4 N D bytes more)")
    args = parser.parse_args()

    (features, labels), seconds, _ = measured(lambda: bank(args.n, args.dim))
    queries, _ = bank(args.queries, args.dim, seed=1)
    generator = torch.Generator().manual_seed(2)
    head = detectors.Head(torch.randn(CLASSES, args.dim, generator=generator) / args.dim ** 0.5,
                          torch.zeros(CLASSES))
    classes = [str(k) for k in range(CLASSES)]
    options = detectors.DetectorOptions(k=args.k, batch_size=args.batch_size)
    print(f"bank {args.n} x {args.dim} float32 ({features.numel() * 4 / 2 ** 30:.2f} GiB), "
          f"{CLASSES} classes, made in {seconds:.1f} s; {args.queries} queries; batches of "
          f"{args.batch_size}; {torch.get_num_threads()} torch threads")
    print("memory: peak RSS (VmHWM) above the RSS at the row's start")
    print(f"{'':40}{'s':>9}{'MiB':>9}   {'reference':<32}{'s':>9}{'MiB':>9}")

    def row(name: str, seconds: float, mib: float, reference: str = "-",
            reference_seconds: float | None = None, reference_mib: float | None = None) -> None:
        extra = ("" if reference_seconds is None or reference_mib is None
                 else f"{reference_seconds:9.2f}{reference_mib:9.0f}")
        print(f"{name:40}{seconds:9.2f}{mib:9.0f}   {reference:<32}{extra}", flush=True)

    reference: tuple[str, float, float] = ("-", 0.0, 0.0)
    if not args.skip_reference:
        _, cov_seconds, cov_mib = measured(lambda: np.cov(features.numpy(), rowvar=False))
        reference = ("np.cov(bank), one shot", cov_seconds, cov_mib)
    fits: dict[str, detectors.Scorer] = {}
    for name in detectors.DETECTORS:
        needs = detectors.get(name).needs_head
        scorer, seconds, mib = measured(lambda name=name, needs=needs: detectors.fit(
            name, features, labels, head if needs else None, classes, options))
        fits[name] = scorer  # type: ignore[assignment]
        if name in ("mahalanobis", "ddu") and reference[0] != "-":
            row(f"{name} fit", seconds, mib, *reference)
        else:
            row(f"{name} fit", seconds, mib)
    for name, scorer in fits.items():
        label = f"{name} score {args.queries}" + (f" (k = {args.k})" if name == "knn" else "")
        _, seconds, mib = measured(lambda scorer=scorer: scorer(queries))
        row(label, seconds, mib)


if __name__ == "__main__":
    main()
