"""What a micro training run produces, minus timings: the fingerprint that a refactoring must leave
unchanged (train_log.csv rows, metrics.json, the trained weights).

    python tests/golden.py record OUT.json [--all]   # --all: every family x algorithm x finetune

tests/unit/test_golden.py compares the default micro config's runs against tests/data/golden.json,
recorded with this script before the train package was split (the code of commit 3521b38).
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ALGORITHMS = ["egrpo", "dancegrpo", "mixgrpo", "flowgrpo"]
# columns and keys that measure time or name a run: not part of the fingerprint
TIMING = ("_s", "_peak_gib")
VOLATILE = {"mlflow_run_id", "wall_s"}


def micro_cfg(work: Path, family: str = "flux", finetune: str = "lora") -> dict:
    cfg = yaml.safe_load((ROOT / "tests/data/micro.yaml").read_text())
    for key in ("train", "eval"):
        cfg["prompts"][key] = str(ROOT / cfg["prompts"][key])
    cfg["mlflow"] = {"tracking_uri": f"sqlite:///{work}/mlflow.db"}
    cfg["model"].update(family=family, device="cpu")   # the recording ran on the CPU
    cfg["train"].update({"iterations": 2, "prompts_per_iteration": 2, "learning_rate": 1e-2, "finetune": finetune})
    if family != "flux":
        cfg["sampling"].update({"schedule": "pipeline", "negative_prompt": "a blurry image"})
    return cfg


def _clean(value):
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def fingerprint(out: Path) -> dict:
    import pandas as pd
    from safetensors.torch import load_file

    log = pd.read_csv(out / "train_log.csv")
    log = log[[c for c in log.columns if not c.endswith(TIMING)]]
    weights = {}
    for f in sorted((out / "checkpoint").glob("*.safetensors")):
        for name, t in sorted(load_file(str(f)).items()):
            weights[f"{f.name}:{name}"] = {"sha256": hashlib.sha256(t.float().numpy().tobytes()).hexdigest()[:16],
                                           "sum": float(t.double().sum()), "abs_sum": float(t.double().abs().sum())}
    return {"train_log": _clean(log.to_dict(orient="list")),
            "metrics": _clean(json.loads((out / "metrics.json").read_text())), "weights": weights}


def run(work: Path, family: str, algorithm: str, finetune: str) -> dict:
    from egrpo.cli import main

    work.mkdir(parents=True, exist_ok=True)
    cfg_path = work / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(micro_cfg(work, family, finetune)))
    model = work.parent / f"model-{family}"
    if not model.exists():
        assert main(["build-model", "--config", str(cfg_path), "--out", str(model)]) == 0
    plan = work.parent / "plan.json"
    plan.write_text(json.dumps({"plan": [{"start": 0, "length": 1}, {"start": 1, "length": 2}]}))
    out = work / "out"
    code = main(["train", "--config", str(cfg_path), "--model", str(model), "--plan", str(plan), "--algorithm",
                 algorithm, "--reward-setting", "color", "--seed", "3", "--out", str(out),
                 "--resume-dir", str(work / "resume")])
    assert code == 0, f"train {family}/{algorithm}/{finetune} exited {code}"
    return fingerprint(out)


def cases(everything: bool) -> list[tuple[str, str, str]]:
    families = ["flux", "sd3", "qwenimage"] if everything else ["flux"]
    finetunes = ["lora", "full"] if everything else ["lora"]
    return [(f, a, t) for f in families for a in ALGORITHMS for t in finetunes]


def record(path: str, everything: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        result = {f"{f}/{a}/{t}": run(Path(tmp) / f"{f}-{a}-{t}", f, a, t) for f, a, t in cases(everything)}
    Path(path).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "record":
        sys.exit(__doc__)
    record(sys.argv[2], "--all" in sys.argv)
