"""`egrpo prompts`: the paper's prompt files from the downloaded HPDv2 dataset.

HPDv2 (https://huggingface.co/datasets/zhwang/HPDv2, the HPS v2 paper's dataset; docs/paper-data.md)
holds, in the layout of its repository:

    train.json                 a list of {"prompt": ..., "human_preference": ..., ...}: the HPD
                               training prompts, each once per annotated pair
    test.json                  a list of {"prompt": ..., "image_path": [...], "rank": ...}: the 400
                               HPDv2 test prompts that E-GRPO, DanceGRPO and MixGRPO evaluate on
                               (VisualGRPO ships the same 400 as scripts/evaluation/prompt_test.txt)
    benchmark/<style>.json     hpsv2's benchmark: anime, concept-art, paintings, photo, 800
                               prompt strings each

and this writes, in --out:

    train.txt                  the training prompts, one a line, each once, in first-seen order
    test.txt                   the test prompts, one a line
    benchmark.json             the benchmark as [{"prompt": ..., "style": ...}]: `egrpo evaluate`
                               keeps the style as a column and the report breaks every metric down
                               per style (prompts.benchmark)

A prompt's line breaks become spaces (one prompt a line). Counts that differ from the published
ones (400 test prompts, 4 x 800 benchmark prompts) are reported, not refused.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from egrpo.errors import UserError
from egrpo.runtime.io import atomic_write_json, atomic_write_text


NAME = "prompts"
HELP = ("Write the paper's prompt files from a downloaded HPDv2 (train.txt, test.txt: the 400 test prompts, "
        "benchmark.json: hpsv2's 4 styles x 800 with their style); docs/paper-data.md says where to get it.")
CONFIG = None   # needs no config


def add_arguments(p) -> None:
    p.add_argument("--hpdv2", required=True, help="the HPDv2 download: train.json, test.json, benchmark/<style>.json")
    p.add_argument("--out", required=True, help="output directory (e.g. data/hpd)")


def run(args, cfg) -> None:
    counts = convert_hpdv2(args.hpdv2, args.out)
    styles = ", ".join(f"{s} {n}" for s, n in counts["benchmark"].items())
    print(f"{args.out}: train.txt {counts['train']} prompts, test.txt {counts['test']}, benchmark.json {styles}")

log = logging.getLogger("egrpo.stages.prompts")

STYLES = ("anime", "concept-art", "paintings", "photo")
PUBLISHED = {"test": 400, "benchmark_per_style": 800}


def _read_json(path: Path):
    if not path.is_file():
        raise UserError(f"--hpdv2: {path} not found (the HPDv2 download's layout: train.json, test.json, "
                        "benchmark/<style>.json; docs/paper-data.md)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"--hpdv2: {path} is not valid JSON ({e})") from None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _prompts_of(records, path: Path) -> list[str]:
    """Unique prompts, first-seen order, from a list of {"prompt": ...} records or of strings."""
    if not isinstance(records, list):
        raise UserError(f"--hpdv2: {path}: expected a JSON list")
    seen: dict[str, None] = {}
    for n, item in enumerate(records):
        text = item.get("prompt") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise UserError(f"--hpdv2: {path}: item {n} has no prompt string")
        text = _one_line(text)
        if text:
            seen.setdefault(text)
    return list(seen)


def convert_hpdv2(source: str | Path, out: str | Path) -> dict:
    """Write train.txt, test.txt and benchmark.json from an HPDv2 download; return the counts."""
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise UserError(f"--hpdv2: {source} is not a directory")
    train = _prompts_of(_read_json(source / "train.json"), source / "train.json")
    test = _prompts_of(_read_json(source / "test.json"), source / "test.json")
    benchmark = []
    for style in STYLES:
        path = source / "benchmark" / f"{style}.json"
        benchmark += [{"prompt": p, "style": style} for p in _prompts_of(_read_json(path), path)]
    atomic_write_text(out / "train.txt", "".join(p + "\n" for p in train))
    atomic_write_text(out / "test.txt", "".join(p + "\n" for p in test))
    atomic_write_json(out / "benchmark.json", benchmark)
    per_style = {s: sum(1 for b in benchmark if b["style"] == s) for s in STYLES}
    counts = {"train": len(train), "test": len(test), "benchmark": per_style}
    if len(test) != PUBLISHED["test"]:
        log.warning("test.json holds %d prompts; the published HPDv2 test set has %d", len(test), PUBLISHED["test"])
    for style, n in per_style.items():
        if n != PUBLISHED["benchmark_per_style"]:
            log.warning("benchmark/%s.json holds %d prompts; hpsv2's benchmark has %d", style, n,
                        PUBLISHED["benchmark_per_style"])
    return counts
