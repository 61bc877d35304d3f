"""The update phase with a group's transitions stacked into one forward, against one by one.

    python benchmarks/batched_update.py [--algorithms dancegrpo mixgrpo flowgrpo] [--per-forward 64]

On the shipped tiny world (config/tinyworld.yaml: its model, reward and sampling), one iteration of
each algorithm twice from the same state: `train.transitions_per_forward` 1 (the official trainers'
way) and N. Printed per algorithm: the update's seconds both ways and their ratio (RESULT), and the
whole iteration's. The loss and gradients are the same (tests/unit/test_train.py checks them).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithms", nargs="+", default=["dancegrpo", "mixgrpo", "flowgrpo"])
    parser.add_argument("--per-forward", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many iterations each way")
    args = parser.parse_args()

    import os

    from egrpo.config import load
    from egrpo.train.trainer import Trainer

    os.chdir(ROOT)
    tmp = Path(tempfile.mkdtemp(prefix="egrpo-batched-"))
    for algorithm in args.algorithms:
        seconds = {}
        for per_forward in (1, args.per_forward):
            cfg = load(ROOT / "config/tinyworld.yaml")
            cfg["mlflow"] = {"tracking_uri": f"sqlite:///{tmp}/mlflow.db"}
            cfg["train"].update(transitions_per_forward=per_forward, prompts_per_iteration=2)
            best = None
            for repeat in range(args.repeats):
                trainer = Trainer(cfg, algorithm, next(iter(cfg["reward_settings"])), 0, None, None,
                                  tmp / f"{algorithm}{per_forward}{repeat}", tmp / f"r{algorithm}{per_forward}{repeat}")
                row = trainer.iteration(0)
                if best is None or row["training_s"] < best["training_s"]:
                    best = row
            seconds[per_forward] = best
        one, many = seconds[1], seconds[args.per_forward]
        print(f"{algorithm}: update {one['training_s']:.2f} s one by one, {many['training_s']:.2f} s with "
              f"{args.per_forward} per forward; iteration {one['iteration_s']:.2f} s -> {many['iteration_s']:.2f} s")
        print(f"RESULT batched_update_speedup_{algorithm} {one['training_s'] / many['training_s']:.2f}")


if __name__ == "__main__":
    main()
