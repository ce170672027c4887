"""`trustmap run` on a user's own model and images: where the time of an audit goes.

Writes a 32x32 RGB ImageFolder of drawn shapes (tests/shapes.py, 4 classes), trains
``--members`` x resnet18 on it with ``trustmap train`` (reused when the folder has them), gives
those members to ``trustmap run`` as a user would (a factory module and one checkpoint per
member, nothing trained by the run) and prints the seconds and share of every section from the
run's ``metrics.json``, beside the wall time of the whole command.

    .venv/bin/python benchmarks/user_model_run.py --work /tmp/user-bench --max-per-set 100
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FACTORY = '''"""The benchmark's factory: trustmap's own ResNet-18 at 32x32, as a user's module."""
from trustmap.models import build


def resnet18(num_classes: int, in_channels: int):
    return build("resnet18", in_channels, num_classes, input_size=[32, 32])
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/user-bench"))
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--per-class", type=int, default=250, help="train and test images")
    parser.add_argument("--max-per-set", type=int, default=100)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from shapes import write_shapes

    work = args.work
    data, members = work / "shapes", work / "members"
    if not data.is_dir():
        write_shapes(data, args.per_class, args.per_class)
    trustmap = [str(Path(sys.executable).with_name("trustmap"))]
    if not (members / f"member-{args.members - 1}.json").is_file():
        subprocess.run([*trustmap, "train", "--model", "resnet18", "--data", str(data),
                        "--members", str(args.members), "--epochs", str(args.epochs),
                        "--augment", "none", "--out", str(members), "--quiet"], check=True)
    (work / "user_factory.py").write_text(FACTORY)
    n = args.max_per_set
    checkpoints = [str(members / f"member-{i}.safetensors") for i in range(args.members)]
    config = work / "run.toml"
    config.write_text(f"""name = "audit-{n}"
[data]
in_distribution = "{data}"
max_per_set = {n}
[model]
factory = "user_factory:resnet18"
checkpoints = {json.dumps(checkpoints)}
[adversarial]
n = {min(500, n)}
[explanations]
faithfulness_n = {min(200, n)}
sanity_n = {min(32, n)}
""")
    started = time.perf_counter()
    subprocess.run([*trustmap, "run", "--config", str(config), "--runs-dir", str(work / "runs"),
                    "--quiet"], check=True, cwd=work)
    wall = time.perf_counter() - started
    seconds = json.loads((work / "runs" / f"audit-{n}" / "metrics.json").read_text()
                         )["header"]["seconds"]
    total = sum(row["seconds"] for row in seconds)
    print(f"{args.members} x resnet18, 32x32 RGB, max_per_set = {n}: {wall:.0f} s wall "
          f"({total:.0f} s in the timed sections)")
    for row in seconds:
        print(f"  {row['section']:<34} {row['seconds']:8.1f} s  {row['seconds'] / total:6.1%}")


if __name__ == "__main__":
    main()
