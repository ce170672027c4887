"""Seed 004's entropic-projection maps: trustmap's vectorised solver side by side with ethik 0.0.4.

Both explain the same images and the same probabilities: the first ``--n`` (1,000) test images
of mnist-embedded and the softmax outputs of seed 004's CNN (the zoo's ``cnn``), trained for
one epoch on mnist-embedded's 4,000 training images so that the maps, and the max |diff|
column comparing trustmap's maps with ethik's, are those of a real model. Three explanations are
timed, each from scratch as ethik does them: the influence maps of the 10 classes, and the
performance maps for accuracy and for log loss. ethik runs with one job (one core); trustmap
runs with one thread, for a like-for-like ratio, and with all threads. trustmap's times are
medians of ``--repeats`` runs; ethik runs once (it takes seconds per explanation).

ethik is not a dependency: it needs pandas < 2. Give the interpreter of a throw-away
environment that has it with ``--ethik-python`` (without it, only trustmap's side is printed):

    python3 -m venv /tmp/ethik-env
    /tmp/ethik-env/bin/pip install ethik==0.0.4 "pandas<2" "numpy<2" scikit-learn
    .venv/bin/python benchmarks/influence_throughput.py --ethik-python /tmp/ethik-env/bin/python

The last line is the wall time of the influence maps for 10,000 images of 784 pixels (the
Fashion-MNIST test set when Debian's dataset-fashion-mnist is installed, else mnist-embedded's
5,000 images twice).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from trustmap.data import load
from trustmap.errors import DataError
from trustmap.explain import influence
from trustmap.models import build
from trustmap.training import TrainConfig, fit, forward_in_batches

REFERENCE = Path(__file__).with_name("ethik_reference.py")
TASKS = ("influence", "accuracy", "log_loss")


def _trained_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build("cnn")
    fit(model, load("mnist-embedded", "train"), config=TrainConfig(epochs=1), progress=False)
    return model.eval()


def _outputs(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return forward_in_batches(model, images).softmax(-1).double()


def _trustmap_maps(images: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor
                   ) -> dict[str, Callable[[], torch.Tensor]]:
    """Each task from scratch: its own projection, then its map."""
    return {
        "influence": lambda: influence.influence_map(influence.project(images), probs),
        "accuracy": lambda: influence.performance_map(influence.project(images), "accuracy",
                                                      labels, probs)[None],
        "log_loss": lambda: influence.performance_map(influence.project(images), "log-loss",
                                                      labels, probs)[None],
    }


def _median_seconds(work: Callable[[], torch.Tensor], repeats: int, threads: int) -> float:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        work()  # warm-up
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            work()
            times.append(time.perf_counter() - started)
        return statistics.median(times)
    finally:
        torch.set_num_threads(previous)


def _ethik(python: str, images: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor
           ) -> dict[str, np.ndarray]:
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "inputs.npz", Path(folder) / "ethik.npz"
        np.savez(source, images=images[:, 0].double().numpy(), labels=labels.numpy(),
                 probs=probs.numpy())
        subprocess.run([python, str(REFERENCE), str(source), str(target)], check=True)
        with np.load(target) as found:
            return {key: found[key] for key in found.files}


def _ten_thousand() -> tuple[torch.Tensor, str]:
    try:
        return load("fashion-mnist", "test").images, "fashion-mnist test"
    except DataError:
        both = torch.cat([load("mnist-embedded", "train").images,
                          load("mnist-embedded", "test").images])
        return torch.cat([both, both]), "mnist-embedded x2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="test images explained")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ethik-python", default=None,
                        help="interpreter of an environment with ethik 0.0.4 and pandas < 2")
    args = parser.parse_args()

    test = load("mnist-embedded", "test")
    images, labels = test.images[:args.n], test.labels[:args.n]
    model = _trained_cnn()
    probs = _outputs(model, images)
    threads = torch.get_num_threads()
    tasks = _trustmap_maps(images, labels, probs)
    ethik = _ethik(args.ethik_python, images, labels, probs) if args.ethik_python else None

    print(f"{len(images)} mnist-embedded test images x {images[0].numel()} pixels, 10 classes; "
          f"tau = -1 and +1, alpha = {influence.ALPHA}")
    print(f"{'maps':<10} {'ethik 1 core s':>15} {'trustmap 1 thread s':>20} {'ratio':>8} "
          f"{f'trustmap {threads} threads s':>22} {'ratio':>8} {'max |diff|':>11}")
    for row, task in enumerate(TASKS):
        one = _median_seconds(tasks[task], args.repeats, 1)
        many = _median_seconds(tasks[task], args.repeats, threads)
        if ethik is None:
            print(f"{task:<10} {'-':>15} {one:>20.3f} {'-':>8} {many:>22.3f} {'-':>8} {'-':>11}")
            continue
        reference = float(ethik["seconds"][row])
        diff = float(np.abs(tasks[task]().reshape(ethik[task].shape).numpy()
                            - ethik[task]).max())
        print(f"{task:<10} {reference:>15.2f} {one:>20.3f} {reference / one:>7.0f}x "
              f"{many:>22.3f} {reference / many:>7.0f}x {diff:>11.3g}")
    if ethik is not None:
        print(f"ethik reported {int(ethik['not_converged'])} (tau, pixel) pairs not converged; "
              "max |diff| comes from where each solver stops (ethik: |mean - target| < 0.01 "
              "std; trustmap: < 1e-6 std of the tilted pixel)")

    large, name = _ten_thousand()
    large_probs = _outputs(model, large)
    torch.set_num_threads(threads)
    started = time.perf_counter()
    projection = influence.project(large)
    influence.influence_map(projection, large_probs)
    seconds = time.perf_counter() - started
    summary = projection.summary()
    print(f"{len(large)} x {large[0].numel()} ({name}), influence maps of 10 classes: "
          f"{seconds:.2f} s with {threads} threads ({summary['pairs_not_converged']} pairs not "
          f"converged, {summary['constant_pixels']} constant pixels, "
          f"{summary['max_iterations']} Newton steps at most)")


if __name__ == "__main__":
    main()
