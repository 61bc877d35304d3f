"""Full fine-tuning sharded with FSDP (`train.sharding: fsdp`) over two CPU processes (gloo): it
trains the same policy as unsharded data parallelism, keeps the processes in step when their work
is uneven, and resumes from its sharded state after a SIGKILL."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from helpers import micro_config
from egrpo.config import validate
from egrpo.errors import ConfigError

WORKER = Path(__file__).parent / "sharded_worker.py"


TINY = {"num_layers": 2, "num_single_layers": 1}  # both kinds of FLUX block (micro.yaml has no single block)


def sharded_model(tmp_path) -> Path:
    from egrpo.stages.build_model import run_build_model

    cfg = micro_config(tmp_path)
    cfg["model"]["tiny"].update(TINY)
    return run_build_model(validate(cfg), tmp_path / "model")


def launch(tmp_path, model_dir, sharding: str, name: str, kill_after: int | None = None) -> subprocess.CompletedProcess:
    heldout = {"every": 2, "metrics": ["prompt_color"], "num_prompts": 1, "images_per_prompt": 1}
    cfg = micro_config(tmp_path, train={"iterations": 3, "prompts_per_iteration": 2, "checkpoint_every": 1,
                                                  "learning_rate": 1e-2, "finetune": "full", "sharding": sharding,
                                                  "heldout": heldout,
                                                  # an EMA (sharded like the weights under FSDP) is the policy
                                                  "ema": {"decay": 0.5, "every": 1, "use_for": ["policy"]}})
    cfg["model"]["tiny"].update(TINY)
    cfg = validate(cfg)
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"plan": [{"start": 0, "length": 1}, {"start": 1, "length": 2}]}))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parent.parent))
    env.pop("EGRPO_FAULT", None)
    if kill_after is not None:
        env["EGRPO_FAULT"] = f"kill-after-iteration:{kill_after}"
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(WORKER), "train", "--config", str(tmp_path / f"{name}.yaml"), "--model", str(model_dir),
                           "--plan", str(plan), "--algorithm", "egrpo", "--reward-setting", "color", "--seed", "0",
                           "--out", str(tmp_path / name), "--resume-dir", str(tmp_path / f"resume-{name}")],
                          env=env, capture_output=True, text=True, timeout=300)


def test_fsdp_trains_what_data_parallel_trains_and_resumes(tmp_path):
    tiny_model_dir = sharded_model(tmp_path)
    unsharded = launch(tmp_path, tiny_model_dir, "none", "ddp")
    assert unsharded.returncode == 0, unsharded.stderr[-3000:]
    killed = launch(tmp_path, tiny_model_dir, "fsdp", "fsdp", kill_after=1)
    assert killed.returncode != 0, "the fault injection kills the job after iteration 1"
    state = tmp_path / "resume-fsdp/state"
    assert json.loads((state / "state.json").read_text())["iteration"] == 1
    assert (state / "sharded/.metadata").is_file(), "each process wrote its shards (torch.distributed.checkpoint)"
    resumed = launch(tmp_path, tiny_model_dir, "fsdp", "fsdp")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    base = load_file(str(tiny_model_dir / "transformer/diffusion_pytorch_model.safetensors"))
    ddp = load_file(str(tmp_path / "ddp/checkpoint/full.safetensors"))
    fsdp = load_file(str(tmp_path / "fsdp/checkpoint/full.safetensors"))
    assert ddp.keys() == fsdp.keys() == base.keys(), "the gathered checkpoint has every weight, unsharded names"
    assert all(fsdp[k].shape == base[k].shape and fsdp[k].dtype == torch.float32 for k in base)
    moved = max(float((ddp[k] - base[k].float()).abs().max()) for k in base)
    assert moved > 1e-3, "training moved the weights"
    assert max(float((ddp[k] - fsdp[k]).abs().max()) for k in base) < 1e-4 * moved, \
        "sharded training (killed and resumed) ends at the unsharded weights"

    logs = {n: pd.read_csv(tmp_path / n / "train_log.csv") for n in ("ddp", "fsdp")}
    pd.testing.assert_series_equal(logs["ddp"]["reward_mean"], logs["fsdp"]["reward_mean"], rtol=1e-5)
    pd.testing.assert_series_equal(logs["ddp"]["nfe_train"], logs["fsdp"]["nfe_train"])
    assert (logs["fsdp"]["nfe_train"] == logs["fsdp"]["nfe_train_expected"]).all(), "padding is not counted as cost"
    assert list(logs["fsdp"]["padded_transitions"]) == [1, 1, 1], "process 0 pads the transition it left out"
    assert list(logs["ddp"]["padded_transitions"]) == [0, 0, 0]
    assert logs["fsdp"]["skipped_steps"].iloc[0] == 0, "the row is process 0's; process 1 skipped its NaN loss"
    metrics = json.loads((tmp_path / "fsdp/metrics.json").read_text())
    curves = [json.loads((tmp_path / n / "metrics.json").read_text())["heldout_curve"] for n in ("ddp", "fsdp")]
    assert [p["iteration"] for p in curves[1]] == [0, 2, 3], "held-out points: base, every 2, last"
    for a, b in zip(*curves):  # sampled by both sharded processes, scored by the main one
        assert a["forward_equivalents"] == b["forward_equivalents"]
        assert abs(a["heldout_prompt_color"] - b["heldout_prompt_color"]) < 1e-5
    assert metrics["sharding"] == "fsdp" and metrics["processes"] == 2 and metrics["resumed_from_iteration"] == 1
    assert metrics["ema"]["decay"] == 0.5, "the checkpoints compared above are the (sharded, resumed) EMAs"
    assert not (tmp_path / "resume-fsdp").exists(), "resume state is cleared after success"


@pytest.mark.parametrize("change, message", [
    ({"train": {"sharding": "fsdp"}}, "train.sharding"),
    ({"train": {"sharding": "fsdp", "finetune": "full"}, "model": {"compile": True}}, "model.compile"),
    ({"train": {"sharding": "fsdp", "finetune": "full", "mixed_precision": "fp16"}}, "train.mixed_precision"),
])
def test_fsdp_config_errors(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        validate(micro_config(tmp_path, **change))


def test_prompts_must_split_evenly_over_processes(tmp_path, tiny_model_dir):
    cfg = validate(micro_config(tmp_path, train={"iterations": 1, "prompts_per_iteration": 3}))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "egrpo", "train", "--config", str(tmp_path / "c.yaml"), "--model", str(tiny_model_dir),
                             "--algorithm", "dancegrpo", "--reward-setting", "color", "--seed", "0",
                             "--out", str(tmp_path / "o"), "--resume-dir", str(tmp_path / "r")],
                            env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "train.prompts_per_iteration: 3 prompts per iteration cannot be split evenly over 2 processes" in result.stderr


def test_resume_state_written_sharded_is_not_read_unsharded(tmp_path, tiny_model_dir):
    from egrpo.errors import UserError
    from egrpo.stages.train import run_train

    state = tmp_path / "resume/state"
    (state / "sharded").mkdir(parents=True)
    (state / "state.json").write_text(json.dumps({"iteration": 1}))
    cfg = validate(micro_config(tmp_path, train={"iterations": 2, "finetune": "full"}))
    with pytest.raises(UserError, match="was written sharded .* this run is unsharded"):
        run_train(cfg, "dancegrpo", "color", 0, str(tiny_model_dir), None, tmp_path / "o", tmp_path / "resume")
