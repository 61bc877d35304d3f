"""What a train run trains, built in one place: LoRA adapters or the full transformer, the KL
reference policy, fp32 master weights (sharded or not), the optimizer, the EMA of the weights; and
one optimizer step (gradients averaged over processes, norm clipped, EMA folded in when due).

The reference policy of the KL term is the base model: the LoRA adapter switched off, or a frozen
copy under full fine-tuning (never the old policy, whose log-probs are stored at rollout time).
"""
from __future__ import annotations

import contextlib
import copy

import torch

from egrpo.models import add_lora
from egrpo.train import ema


class Trainable:
    def __init__(self, model, algorithm, tcfg: dict, processes, kl_to_base: bool = False):
        self.processes, self.max_grad_norm = processes, tcfg["max_grad_norm"]
        transformer, blocks = model.transformer, model.family.block_lists
        if tcfg["gradient_checkpointing"]:  # recompute block activations in the backward (FLUX scale)
            transformer.enable_gradient_checkpointing()
        if tcfg["finetune"] == "lora":
            add_lora(transformer, tcfg["lora_rank"], tcfg["lora_alpha"], model.family.lora_targets, tcfg["lora_init"])
        else:
            if algorithm.kl_beta > 0 or kl_to_base:  # the reference policy (KL term, health): a frozen copy of the base
                model.reference = copy.deepcopy(transformer).requires_grad_(False).eval()
                processes.shard_reference(model.reference, model.compute_dtype, blocks)
            transformer.requires_grad_(True)
        processes.make_masters(transformer, model.compute_dtype, blocks)
        self.params = [p for p in transformer.parameters() if p.requires_grad]  # sharded ones, under fsdp
        self.optimizer = torch.optim.AdamW(self.params, lr=algorithm.learning_rate, weight_decay=tcfg["weight_decay"])
        self.optimizer = processes.prepare(transformer, self.optimizer)
        # train.ema: an EMA of the trained weights, where the algorithm's recipe keeps one
        self.ema_setting = ema.resolve(tcfg["ema"], algorithm)
        self.ema = ema.EMA(self.params, **self.ema_setting) if self.ema_setting else None

    def step(self, state) -> float:
        """Average the gradients over processes, clip their norm, step, clear, fold the weights into
        the EMA when it is due; returns the norm before clipping."""
        norm = self.processes.clip_grad_norm(self.params, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        state.optimizer_steps += 1
        if self.ema is not None:
            self.ema.update(state.optimizer_steps)
        return norm

    def applied(self, purpose: str):
        """The EMA in place of the trained weights, where train.ema uses it for `purpose`."""
        return self.ema.applied(purpose) if self.ema else contextlib.nullcontext()

    def extra_state(self) -> dict | None:
        """Tensors of the resume state besides weights and optimizer (the EMA's shadow)."""
        return self.ema.state() if self.ema else None
