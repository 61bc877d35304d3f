"""The claims experiment's tuning budget, run in the open: the same learning-rate grid for every
algorithm, on a tuning seed that the claims never use, at the claims' budget of forward-equivalents.

    python tools/tune_claims.py [--config config/claims.yaml] [--seed 99] [--jobs 2] [--out results/tuning]
                                [--grid 1e-5 3e-5 1e-4]

Writes <out>/tuning.csv (algorithm, learning_rate, final held-out metric, its best value, base) and
prints the best rate per algorithm by the final held-out metric; config/claims.yaml records the
choice (claims.tuning_note). Each run is `egrpo train`, exactly as the DAG calls it.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

GRID = [1.0e-5, 3.0e-5, 1.0e-4]  # full fine-tuning; LoRA (rank 8) was tuned on 3e-4, 1e-3, 3e-3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/claims.yaml")
    parser.add_argument("--seed", type=int, default=99)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="results/tuning")
    parser.add_argument("--grid", type=float, nargs="+", default=GRID, help="learning rates, the same for every algorithm")
    args = parser.parse_args()

    import pandas as pd

    from egrpo.config import load
    from egrpo.stages.threshold import run_threshold

    base = load(args.config)
    base["experiment"] = f"{base['experiment']}_tuning"  # its own MLflow experiment: never mixed with the claims
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base_path = out / "base.yaml"
    base_path.write_text(yaml.safe_dump(base, sort_keys=False))
    plan = out / "plan.json"
    run_threshold(base, None, plan)  # the quantile rule needs no profile
    metric = base["claims"]["heldout_metric"]
    setting = base["claims"]["reward_setting"] or next(iter(base["reward_settings"]))
    subprocess.run([sys.executable, "-m", "egrpo", "mlflow-init", "--config", str(base_path)], check=True)

    def one(job):
        algorithm, lr = job
        cfg = copy.deepcopy(base)
        cfg["algorithm_params"].setdefault(algorithm, {})["learning_rate"] = lr  # over any tuned rate in the config
        name = f"{algorithm}-lr{lr:g}"
        cfg_path = out / f"{name}.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        cmd = [sys.executable, "-m", "egrpo", "train", "--config", str(cfg_path), "--model", cfg["model"]["path"],
               "--plan", str(plan), "--algorithm", algorithm, "--reward-setting", setting, "--seed", str(args.seed),
               "--out", str(out / name), "--resume-dir", str(out / "resume" / name)]
        with open(out / f"{name}.log", "w") as log:
            subprocess.run(cmd, check=True, stderr=log, env={**os.environ, "OMP_NUM_THREADS": "1"})
        m = json.loads((out / name / "metrics.json").read_text())
        values = [p[f"heldout_{metric}"] for p in m["heldout_curve"]]
        row = {"algorithm": algorithm, "learning_rate": lr, f"final_{metric}": values[-1],
               f"best_{metric}": max(values), f"base_{metric}": values[0], "iterations": m["iterations"],
               "forward_equivalents": m["forward_equivalents"]}
        print(json.dumps(row), flush=True)
        return row

    jobs = [(a, lr) for a in base["algorithms"] for lr in args.grid]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(one, jobs))
    table = pd.DataFrame(rows)
    table.to_csv(out / "tuning.csv", index=False)
    best = table.loc[table.groupby("algorithm")[f"final_{metric}"].idxmax()]
    print(table.to_string(index=False))
    print("\nbest learning rate per algorithm (final held-out", metric + "):")
    print(best[["algorithm", "learning_rate", f"final_{metric}"]].to_string(index=False))


if __name__ == "__main__":
    main()
