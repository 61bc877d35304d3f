"""PPO ratio at the first inner step, float32 against bfloat16 (a GPU check; runs anywhere).

    python benchmarks/bf16_ratio.py [--config config/tinyworld.yaml] [--device cuda] [--prompts 4]

Training recomputes the log-prob of each stored transition and divides by the one stored at
rollout: before any update the ratio must be 1. In float32 it is, up to ~1e-7 (tests/unit/test_train.py).
In bfloat16 the rollout (lanes, groups) and the training pass may batch the same samples
differently (each algorithm's optimizer steps split a transition's members into the units of
`Algorithm.update_units`, e.g. DanceGRPO's chunks of 4 samples), so the velocity can differ in the
last bits and the ratio drift from 1. The check evaluates every transition exactly as the trainer
does, unit by unit, with the algorithm's own recipe (timestep rounding included). This
prints, per algorithm and dtype, the mean and max of |ratio - 1| and the share of transitions
beyond the PPO clip range (train.clip_range; paper: 1e-4): a share near 1 means the clip acts on
numerical noise, not on policy change. --config also takes a resolved config as JSON (for
machines without the config's validation dependencies).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def load_config(path: str) -> dict:
    if path.endswith(".json"):
        return json.loads(Path(path).read_text())
    from egrpo.config import load
    return load(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/tinyworld.yaml")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--algorithms", nargs="+", default=["egrpo", "dancegrpo", "mixgrpo", "flowgrpo"])
    args = parser.parse_args()

    from egrpo import sde
    from egrpo.algorithms import build_algorithm
    from egrpo.models import FlowModel, load_pipeline

    cfg = load_config(args.config)
    from egrpo.plan import merge_plan  # noqa: E402  (pure math, no config validation)
    sigmas = sde.sigma_schedule(cfg["sampling"]["num_steps"], cfg["sampling"]["shift"])
    tau = float(torch.tensor(sde.step_entropies(sigmas, cfg["sampling"]["eta"])).quantile(0.5))
    plan = [(s, k) for s, k, _ in merge_plan(sigmas, cfg["sampling"]["eta"], tau)[0]]
    prompts = [l.strip() for l in Path(cfg["prompts"]["eval"]).read_text().splitlines()
               if l.strip() and not l.startswith("#")][:args.prompts]
    clip = cfg["train"]["clip_range"]
    device = torch.device(args.device)
    print(f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}; model {cfg['model']['path']}; "
          f"{len(prompts)} prompts; clip range {clip:g}")
    for dtype in ("float32", "bfloat16"):
        cfg["model"]["dtype"] = dtype
        model = FlowModel(load_pipeline(cfg, cfg["model"]["path"]), cfg, device)
        for name in args.algorithms:
            algo = build_algorithm(name, cfg, plan if name == "egrpo" else None,
                                   sigmas=model.sigmas(cfg["sampling"]["num_steps"]))
            model.round_timesteps = algo.timestep_rounding
            devs = []
            with torch.no_grad():
                for p, prompt in enumerate(prompts):
                    cond = model.encode([prompt])
                    groups = algo.rollout(model, cond, p, torch.Generator().manual_seed(p), 0)
                    for unit in algo.update_units(groups):
                        for _, tr in unit:
                            v = model.velocity(tr.x_from, float(algo.sigmas[tr.i]), cond)
                            mean, std = algo.mean_std(tr.x_from, v, algo.sigmas, tr.i, tr.j, algo.eta)
                            logp = sde.gaussian_log_prob(tr.x_to, mean.expand_as(tr.x_to), std)
                            devs.append((torch.exp(logp - tr.logp_old) - 1).abs().cpu())
            d = torch.cat(devs).double()
            print(f"{dtype:9s} {name:10s} transitions {d.numel():5d}  mean |ratio-1| {float(d.mean()):.2e}  "
                  f"max {float(d.max()):.2e}  beyond clip {float((d > clip).double().mean()):.3f}")
            print(f"RESULT bf16_ratio_{dtype}_{name} {float(d.mean()):.3e}")


if __name__ == "__main__":
    main()
