"""Training throughput of trustmap's ``fit`` against a bare PyTorch loop, side by side.

The reference is the shortest correct training loop (same model, optimiser, batches). The
ratio says what trustmap's bookkeeping (progress bar, schedule, validation hooks) costs.
Runs interleave, so both see the same machine load; the median of the repeats is printed.

    .venv/bin/python benchmarks/train_throughput.py --model lenet --images 3600
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from trustmap.data import load
from trustmap.models import build
from trustmap.training import TrainConfig, fit


def reference_epoch(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                    batch_size: int) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    started = time.perf_counter()
    for index in torch.randperm(len(x)).split(batch_size):
        loss = F.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return len(x) / (time.perf_counter() - started)


def trustmap_epoch(model: torch.nn.Module, train, batch_size: int, augment: tuple[str, ...]
                   ) -> float:
    config = TrainConfig(epochs=1, batch_size=batch_size, augment=augment)
    return fit(model, train, None, config, progress=False).history[0].images_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--data", default="mnist-embedded")
    parser.add_argument("--images", type=int, default=3600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train = load(args.data, "train")
    train = train.subset(torch.arange(min(args.images, len(train))))
    rows: dict[str, list[float]] = {"reference loop": [], "trustmap fit": [],
                                    "trustmap fit + shift": []}
    for _ in range(args.repeats):
        torch.manual_seed(0)
        rows["reference loop"].append(reference_epoch(build(args.model), train.images,
                                                      train.labels, args.batch_size))
        torch.manual_seed(0)
        rows["trustmap fit"].append(trustmap_epoch(build(args.model), train, args.batch_size, ()))
        torch.manual_seed(0)
        rows["trustmap fit + shift"].append(
            trustmap_epoch(build(args.model), train, args.batch_size, ("shift",)))
    reference = statistics.median(rows["reference loop"])
    print(f"{args.model}, {len(train)} images of {args.data}, batch {args.batch_size}, "
          f"{args.threads} threads, median of {args.repeats}")
    print(f"{'':24}{'images/s':>10}{'ratio':>8}")
    for name, values in rows.items():
        speed = statistics.median(values)
        print(f"{name:24}{speed:10.0f}{speed / reference:8.2f}")


if __name__ == "__main__":
    main()
