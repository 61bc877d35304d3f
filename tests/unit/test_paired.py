"""Paired comparisons (egrpo/analysis/paired.py) against their closed forms, and what the table
shows from them: Δ% only at equal compute, bold only for a row better than every other."""
import math

import pandas as pd
import pytest

from egrpo.analysis.markdown import markdown
from egrpo.analysis.paired import best_at_equal_compute, compare, comparisons, verdict
from egrpo.analysis.tables import summary_table


def scores(rows):
    """rows: (algorithm, reward_setting, seed, prompt, image, score)."""
    return pd.DataFrame(rows, columns=["algorithm", "reward_setting", "seed", "prompt_index", "image_index", "m"])


def test_the_paired_difference_and_its_standard_errors():
    # three prompts, two images, two seeds; B is A minus a per-prompt offset
    offsets = {0: 0.10, 1: 0.04, 2: 0.07}
    rows = []
    for seed, shift in ((0, 0.0), (1, 0.02)):
        for p, off in offsets.items():
            for i in range(2):
                a = 0.5 + 0.1 * p + 0.01 * i
                rows += [("a", "s", seed, p, i, a + shift), ("b", "s", seed, p, i, a - off)]
    c = compare(scores(rows), "m", "a", "b", "s")
    d = pd.Series([off + 0.01 for off in offsets.values()])   # per prompt: offset + mean seed shift 0.01
    assert c["difference"] == pytest.approx(d.mean())
    assert c["paired_se"] == pytest.approx(d.std(ddof=1) / math.sqrt(3))
    per_seed = pd.Series([sum(offsets.values()) / 3, sum(offsets.values()) / 3 + 0.02])
    assert c["seed_se"] == pytest.approx(per_seed.std(ddof=1) / math.sqrt(2))
    assert (c["prompts"], c["seeds"]) == (3, 2)
    expected = verdict(d.mean(), max(c["paired_se"], c["seed_se"]))
    assert c["verdict"] == expected == "better"
    assert compare(scores(rows), "m", "b", "a", "s")["verdict"] == "worse"


def test_verdicts_at_two_standard_errors():
    assert verdict(0.021, 0.01) == "better" and verdict(-0.021, 0.01) == "worse"
    assert verdict(0.019, 0.01) == "within noise" and verdict(0.0, 0.0) == "within noise"
    assert verdict(0.1, float("nan")).startswith("no verdict") and verdict(float("nan"), 0.1) == "n/a"


def test_the_table_shows_delta_and_bold_only_at_equal_compute():
    rows = []
    for alg, bonus in (("egrpo", 0.2), ("dancegrpo", 0.0), ("mixgrpo", 0.1)):
        for p in range(4):
            rows += [(alg, "c", 0, p, 0, 0.3 + bonus + 0.01 * p)]
    rows += [("base", "-", None, p, 0, 0.3 + 0.01 * p) for p in range(4)]
    s = scores(rows)
    per_policy = pd.DataFrame([{"policy": "base", "algorithm": "base", "reward_setting": "-", "m": 0.315}] + [
        {"policy": f"{a}-c-seed0", "algorithm": a, "reward_setting": "c", "m": 0.315 + b, "forward_equivalents": fe}
        for a, b, fe in (("egrpo", 0.2, 1000), ("dancegrpo", 0.0, 1000), ("mixgrpo", 0.1, 2000))])
    table = summary_table(per_policy, ["m"])
    cmp = comparisons(s, table, ["m"])
    pair = lambda a, b: cmp[(cmp["algorithm"] == a) & (cmp["against"] == b)].iloc[0]
    assert pair("egrpo", "dancegrpo")["verdict"] == "better"   # the same difference on every prompt: SE 0
    assert pair("egrpo", "mixgrpo")["verdict"] == "not at equal compute"
    assert pair("egrpo", "base")["difference"] == pytest.approx(0.2)
    assert best_at_equal_compute(cmp) == set()                      # mixgrpo's compute differs: nobody is bold
    text = markdown(table, ["m"], cmp=cmp)
    mix = next(line for line in text.splitlines() if line.startswith("| mixgrpo"))
    egrpo = next(line for line in text.splitlines() if line.startswith("| egrpo"))
    assert mix.split("|")[4].strip() == "" and egrpo.split("|")[4].strip() == "+63.5"   # Δ% only at equal compute
    assert "**" not in text.split("## Paired")[0]
    assert "egrpo vs dancegrpo: +0.2000" in text
