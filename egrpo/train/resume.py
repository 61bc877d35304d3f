"""Resume state of a train run: what a run killed at any point needs to go on as if unbroken.

It lives in `<resume_dir>/state`, outside the job's declared outputs, because Snakemake deletes the
outputs of a failed job; it is written atomically (a crash mid-save leaves the previous state) and
cleared after success. Randomness is a pure function of (seed, iteration) (`egrpo.train.trainer`), so the
state holds no generator: the trainable weights, the optimizer, the extra tensors of the run (the
EMA of the weights) and `state.json` (iteration, counters, log rows, held-out points, prompt
sampler position, MLflow run id).

Unsharded: `weights.safetensors`, `optimizer.pt` (read with weights_only=True), `extra.safetensors`,
`state.json`. Sharded (`train.sharding: fsdp`): every process writes its shards of weights,
optimizer and extra tensors into a `torch.distributed.checkpoint` folder `sharded/` (egrpo.train.sharding);
process 0 adds `state.json`. A folder written one way is refused by a run of the other way.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from egrpo.errors import UserError
from egrpo.models import trainable_state_dict
from egrpo.runtime.io import atomic_dir
from egrpo.train import sharding

log = logging.getLogger("egrpo.train.resume")


class ResumeState:
    """The resume folder of one run: `save` after an iteration, `load` at start, `clear` after success."""

    def __init__(self, resume_dir: str | Path, finetune: str, sharded: bool):
        self.resume_dir = Path(resume_dir)
        self.finetune, self.sharded = finetune, sharded

    @property
    def state_dir(self) -> Path:
        return self.resume_dir / "state"

    def save(self, transformer, optimizer, state: dict, extra: dict[str, torch.Tensor] | None = None) -> None:
        """Write weights, optimizer, `extra` tensors and the json-able `state` (every process when
        sharded, else the main process only)."""
        from safetensors.torch import save_file

        if self.sharded:
            sharding.save_sharded(transformer, optimizer, self.state_dir,
                                  lambda tmp: (tmp / "state.json").write_text(json.dumps(state)), extra=extra)
            return
        with atomic_dir(self.state_dir) as tmp:
            save_file(trainable_state_dict(transformer, self.finetune), str(tmp / "weights.safetensors"))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            if extra:
                save_file({k: v.detach().cpu().contiguous() for k, v in extra.items()}, str(tmp / "extra.safetensors"))
            (tmp / "state.json").write_text(json.dumps(state))

    def load(self, transformer, optimizer, extra: dict[str, torch.Tensor] | None = None) -> dict | None:
        """Read the state back into `transformer`, `optimizer` and the tensors of `extra` (in place);
        returns the json state, or None when there is nothing to resume."""
        from safetensors.torch import load_file

        if not (self.state_dir / "state.json").is_file():
            return None
        written_sharded = (self.state_dir / "sharded").is_dir()
        if written_sharded != self.sharded:
            how = lambda sharded: "sharded (train.sharding: fsdp, several processes)" if sharded else "unsharded"
            raise UserError(f"--resume-dir: the resume state in {self.state_dir} was written {how(written_sharded)} and "
                            f"this run is {how(self.sharded)}; run it as it was, or delete the folder to start over")
        if self.sharded:
            sharding.load_sharded(transformer, optimizer, self.state_dir, extra=extra)
        else:
            weights = load_file(str(self.state_dir / "weights.safetensors"))
            if self.finetune == "lora":
                from peft import set_peft_model_state_dict
                set_peft_model_state_dict(transformer, weights)
            else:
                transformer.load_state_dict(weights, strict=True)
            optimizer.load_state_dict(torch.load(self.state_dir / "optimizer.pt", weights_only=True))
            if extra:
                saved = self.state_dir / "extra.safetensors"
                if not saved.is_file():
                    raise UserError(f"--resume-dir: {self.state_dir} has no {saved.name} but this run keeps "
                                    f"{sorted(extra)[:2]}… (train.ema changed?); delete the folder to start over")
                stored = load_file(str(saved))
                for name, tensor in extra.items():
                    tensor.copy_(stored[name])
        state = json.loads((self.state_dir / "state.json").read_text())
        state["resumed_from"] = state["iteration"]
        log.info("resuming from iteration %d (%s)", state["iteration"], self.state_dir)
        return state

    def clear(self) -> None:
        remove_resume_state(self.resume_dir)


def remove_resume_state(resume_dir: Path) -> None:
    """After success the resume state goes, and so do the folders that held only it: up to the
    workflow's `resume/` folder (resume/<algorithm>/<reward setting>/seed<k>), never a non-empty one."""
    shutil.rmtree(resume_dir, ignore_errors=True)
    parents = list(Path(resume_dir).parents)[:3]
    if not any(p.name == "resume" for p in parents):
        return
    for parent in parents:
        try:
            parent.rmdir()
        except OSError:   # not empty (another run's state) or already gone
            break
        if parent.name == "resume":
            break
