"""Shared set-up of the benchmarks: a tiny FLUX of a given size, built in a temp dir."""
from __future__ import annotations

import platform
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

# "a few million parameters": 4 heads x 32, 2 double + 4 single blocks (~3.4 M in the transformer)
MEDIUM = {"seed": 0, "text_hidden": 64, "text_layers": 2, "attention_heads": 4, "head_dim": 32,
          "num_layers": 2, "num_single_layers": 4, "vae_channels": 16, "vae_blocks": 4, "latent_channels": 4}


def benchmark_config(tiny: dict | None = None, **sampling) -> dict:
    from egrpo.config import validate

    cfg = yaml.safe_load((ROOT / "config/tinyworld.yaml").read_text())
    for key in ("train", "eval"):
        cfg["prompts"][key] = str(ROOT / cfg["prompts"][key])
    cfg["model"]["source"] = "tiny"  # random weights of a chosen size (speed does not depend on them)
    cfg["model"]["tiny"] = dict(tiny or MEDIUM)
    cfg["reward_settings"] = {"color": {"prompt_color": 1.0}}  # a cheap reward: the model's cost is measured
    cfg["evaluate"]["metrics"] = []
    cfg["sampling"].update(sampling)
    tmp = Path(tempfile.mkdtemp(prefix="egrpo-bench-"))
    cfg["mlflow"] = {"tracking_uri": f"sqlite:///{tmp}/mlflow.db"}
    cfg = validate(cfg)
    cfg["_tmp"] = str(tmp)
    return cfg


def build_model(cfg: dict):
    from egrpo.models import FlowModel, load_pipeline
    from egrpo.stages.build_model import run_build_model

    directory = run_build_model({k: v for k, v in cfg.items() if k != "_tmp"}, Path(cfg["_tmp"]) / "model")
    return directory, FlowModel(load_pipeline(cfg, directory), cfg)


def best_of(fn, repeats: int = 3) -> float:
    """Minimum wall time of `repeats` calls (seconds)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def machine() -> str:
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return (f"{platform.node()} {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
            f"commit {commit}")
