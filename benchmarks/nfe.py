"""Measured model calls per prompt and iteration of every algorithm, next to the closed form.

    python benchmarks/nfe.py [--num-steps 16] [--group-size 12]

Runs one real training iteration (one prompt) per algorithm on the tiny model with the merge
plan of the quantile rule, and prints rollout / training / reference NFE as counted by the
wrapped model call, the closed forms of docs/design.md §2 for each algorithm's published recipe
(DanceGRPO's training cost depends on which members drew step 0, whose state they share: its
"formula" column is the trainer's own count from the drawn step sets), forward-equivalents and mean
|ratio - 1| before the first optimizer step. Ends with `RESULT nfe_egrpo_over_dancegrpo <ratio of forward-equivalents>`.
"""
from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-steps", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=12)
    parser.add_argument("--config", default="config/tinyworld.yaml")
    args = parser.parse_args()

    from egrpo.config import validate
    from egrpo.stages.build_model import run_build_model
    from egrpo.plan import make_plan
    from egrpo.train.trainer import Trainer
    import json

    cfg = yaml.safe_load(Path(args.config).read_text())
    tmp = Path(tempfile.mkdtemp(prefix="egrpo-nfe-"))
    cfg["sampling"].update(num_steps=args.num_steps, group_size=args.group_size)
    cfg["train"].update(iterations=1, prompts_per_iteration=1)
    cfg["mlflow"] = {"tracking_uri": f"sqlite:///{tmp}/mlflow.db"}
    cfg["model"]["source"] = "tiny"  # call counts do not depend on the weights: a random tiny FLUX
    cfg = validate(cfg)
    model_dir = run_build_model(cfg, tmp / "model")
    plan = make_plan(cfg, None)
    (tmp / "plan.json").write_text(json.dumps(plan))
    entries = [(e["start"], e["length"]) for e in plan["plan"]]
    n, g = args.num_steps, args.group_size
    mix = cfg["algorithm_params"]["mixgrpo"]
    window = min(mix["window_size"], n - 2)  # at step 0 in the first iteration; never the last two steps
    mix_chunks = math.ceil(g / mix["samples_per_step"])
    flow_trained = int(cfg["algorithm_params"]["flowgrpo"]["timestep_fraction"] * n)
    branch = cfg["algorithm_params"]["branchgrpo"]
    bn = branch["num_steps"] or n
    splits = sorted({min(s, bn - 1) for s in branch["split_points"]})
    branch_nodes = [2 ** sum(s < i for s in splits) for i in range(bn)]   # nodes per step of its tree
    nft = cfg["algorithm_params"]["diffusionnft"]
    nft_n = nft["num_steps"] or n
    formulas = {
        "egrpo": (max(s for s, _ in entries) + 1 + sum(g * math.ceil((n - s - k) / gr) for s, k in entries
                  for gr in cfg["algorithm_params"]["egrpo"]["granular_list"]), len(entries)),
        "dancegrpo": (1 + g * (n - 1), None),          # shared initial noise: v(x_0) once
        "mixgrpo": (1 + g * (n - 1), mix_chunks + g * (window - 1)),
        "flowgrpo": (g * n, g * flow_trained),
        # every edge of its tree, unpruned: the children made by each step
        "branchgrpo": (sum(branch_nodes), sum(branch_nodes[1:]) + branch_nodes[-1] * (2 if bn - 1 in splits else 1)),
        "diffusionnft": (g * nft_n, g * int(nft["timestep_fraction"] * nft_n)),   # its own N, deterministic
    }
    print(f"N = {n}, G = {g}, plan ({plan['rule']}, tau = {plan['tau']:.3f}): {entries}")
    print(f"{'algorithm':10s} {'rollout':>8s} {'formula':>8s} {'train':>6s} {'formula':>8s} {'ref':>5s} "
          f"{'fwd-equiv':>9s} {'|ratio-1|':>10s}")
    fe = {}
    for name in ("egrpo", "dancegrpo", "mixgrpo", "flowgrpo", "branchgrpo", "diffusionnft"):
        trainer = Trainer(cfg, name, next(iter(cfg["reward_settings"])), 0, str(model_dir),
                          str(tmp / "plan.json") if name == "egrpo" else None, tmp / name, tmp / f"r-{name}")
        row = trainer.iteration(0)
        fe[name] = row["forward_equivalents"]
        train_formula = formulas[name][1] if formulas[name][1] is not None else row["nfe_train_expected"]
        print(f"{name:10s} {row['nfe_rollout']:8d} {formulas[name][0]:8d} {row['nfe_train']:6d} {train_formula:8d} "
              f"{row['nfe_reference']:5d} {row['forward_equivalents']:9d} {row['ratio_abs_dev_first']:10.2e}")
    print(f"RESULT nfe_egrpo_over_dancegrpo {fe['egrpo'] / fe['dancegrpo']:.3f}")


if __name__ == "__main__":
    main()
