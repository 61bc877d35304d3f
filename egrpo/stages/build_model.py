"""Stage `build-model`: the tiny model of `model.family`, built from the family's real diffusers
classes with random weights (tokenizers built from the prompt files) and saved as safetensors."""
from __future__ import annotations

import logging
from pathlib import Path

from egrpo.errors import UserError
from egrpo.models import build_tiny_pipeline
from egrpo.runtime.io import atomic_dir, load_prompts

NAME = "build-model"
HELP = "Build the tiny offline pipeline of model.family and save it (safetensors)."
PHASE = "loading"

log = logging.getLogger("egrpo.build_model")


def add_arguments(p) -> None:
    p.add_argument("--out", required=True, help="output directory of the pipeline")


def run(args, cfg) -> None:
    run_build_model(cfg, args.out)


def run_build_model(cfg: dict, out_dir) -> Path:
    """Save the tiny model of model.family (tokenizers built from the prompt files)."""
    if cfg["model"]["source"] != "tiny":
        raise UserError("model.source: build-model only builds the tiny model; a pretrained model is used in place "
                        f"from model.path ({cfg['model']['path']})")
    texts = [p.text for key in ("train", "eval") for p in load_prompts(cfg["prompts"][key], f"prompts.{key}")]
    pipe = build_tiny_pipeline(cfg, texts)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    n_params = sum(p.numel() for p in pipe.transformer.parameters())
    log.info("tiny %s saved to %s (transformer: %d parameters)", type(pipe).__name__, out_dir, n_params)
    return out_dir
