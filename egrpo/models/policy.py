"""The fine-tuned part of a transformer: a peft LoRA adapter on the family's target modules, or the
full weights; saved as safetensors with a meta.json that says how to apply them again."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from egrpo.errors import UserError


def add_lora(transformer, rank: int, alpha: float, targets, init: str = "kaiming") -> None:
    """Attach a peft LoRA adapter to the modules of `transformer` whose names end in one of
    `targets` (the family's list: `Family.lora_targets`); `init` (train.lora_init): A kaiming-uniform
    (peft's default) or gaussian N(0, 1/r); B starts at 0."""
    from peft import LoraConfig

    names = [name for name, _ in transformer.named_modules()]
    present = [t for t in targets if any(n == t or n.endswith("." + t) for n in names)]
    if not present:
        raise UserError(f"LoRA: none of the target modules {list(targets)} is in {type(transformer).__name__}")
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=present,
                                       init_lora_weights="gaussian" if init == "gaussian" else True))


def trainable_state_dict(transformer, finetune: str) -> dict[str, torch.Tensor]:
    if finetune == "lora":
        from peft import get_peft_model_state_dict
        return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(transformer).items()}
    return {k: v.detach().cpu().contiguous() for k, v in transformer.state_dict().items()}


def save_policy(transformer, finetune: str, directory: Path, meta: dict, state: dict | None = None) -> None:
    """Write the policy's weights (safetensors) and meta.json into `directory`; `state`: weights
    already gathered (a sharded transformer's full state dict, or the EMA), else read from `transformer`.
    A LoRA policy's meta names its rank, alpha and target modules."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    if state is None:
        state = trainable_state_dict(transformer, finetune)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(directory / f"{finetune}.safetensors"))
    (directory / "meta.json").write_text(json.dumps({"finetune": finetune, **meta}, indent=2))


def load_policy(transformer, directory: str | os.PathLike, targets=None) -> dict:
    """Apply a checkpoint written by `save_policy` to a freshly loaded base transformer (`targets`:
    the family's LoRA targets, for checkpoints whose meta.json does not name them)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        raise UserError(f"checkpoint: {directory} has no meta.json (not a checkpoint written by egrpo train)")
    meta = json.loads(meta_path.read_text())
    state = load_file(str(directory / f"{meta['finetune']}.safetensors"))
    if meta["finetune"] == "lora":
        from peft import set_peft_model_state_dict
        targets = meta.get("lora_targets") or targets
        if not targets:
            raise UserError(f"checkpoint: {directory}/meta.json does not name its LoRA target modules; pass the family's")
        add_lora(transformer, meta["lora_rank"], meta["lora_alpha"], targets)
        result = set_peft_model_state_dict(transformer, state)
        if result.unexpected_keys:
            raise UserError(f"checkpoint: unexpected LoRA keys in {directory}: {result.unexpected_keys[:3]}")
    else:
        transformer.load_state_dict(state, strict=True)
    return meta
