"""Write the compositional tiny world's prompt files (egrpo/compworld.py):

    python tools/compworld_prompts.py [--train 240] [--eval 48] [--out config/prompts]

comp_train.txt: scenes of every task, none using a held-out composition (seed 0);
comp_eval.txt: half seen compositions (4 single objects, the rest new scenes; seed 1), half held-out ones
(seed 2), so that the
report tells learning the composition from memorising it. Deterministic: the same files every run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from egrpo import compworld  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=240)
    parser.add_argument("--eval", type=int, default=48)
    parser.add_argument("--out", default="config/prompts")
    args = parser.parse_args()
    out = Path(args.out)
    train = list(dict.fromkeys(compworld.prompt(s) for s in compworld.split(4 * args.train, 0, heldout=False)))
    train = train[:args.train]   # distinct prompts (a single object's prompt does not name its colour)
    seen = [p for p in (compworld.prompt(s) for s in compworld.split(4 * args.eval, 1, heldout=False))
            if p not in set(train)]
    # single objects: all 24 such prompts are training prompts; the task is still measured (4 of them)
    single = list(dict.fromkeys(compworld.prompt(s) for s in compworld.split(40, 1, False, ("single_object",))))[:4]
    seen = single + list(dict.fromkeys(seen))[:args.eval // 2 - len(single)]
    held = list(dict.fromkeys(compworld.prompt(s) for s in compworld.split(4 * args.eval, 2, heldout=True)))
    held = held[:args.eval - len(seen)]
    header = "# Compositional tiny world ({}): tools/compworld_prompts.py writes this file.\n"
    (out / "comp_train.txt").write_text(header.format("training prompts, no held-out composition")
                                        + "".join(p + "\n" for p in train))
    (out / "comp_eval.txt").write_text(header.format(f"{len(seen)} seen compositions, then {len(held)} held-out ones")
                                       + "".join(p + "\n" for p in seen + held))
    print(f"{out}/comp_train.txt: {len(train)} prompts; {out}/comp_eval.txt: {len(seen)} seen + {len(held)} held-out")


if __name__ == "__main__":
    main()
