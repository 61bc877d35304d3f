"""The report's table: evaluation standard errors and the equal-compute caveat."""
import math

import pandas as pd
import pytest

from egrpo.evaluate import evaluation_se
from egrpo.report import compute_caveats, markdown, summary_table


def test_evaluation_se_takes_prompts_as_the_units():
    scores = pd.DataFrame({"prompt_index": [0, 0, 1, 1, 2, 2], "hps": [1.0, 3.0, 4.0, 4.0, 0.0, 0.0]})
    # per-prompt means 2, 4, 0: std (ddof 1) = 2, over sqrt(3) prompts
    assert evaluation_se(scores, "hps") == pytest.approx(2 / math.sqrt(3))
    assert math.isnan(evaluation_se(scores[scores["prompt_index"] == 0], "hps"))


def per_policy(egrpo_fe: float) -> pd.DataFrame:
    rows = [{"policy": "base", "algorithm": "base", "reward_setting": "-", "hps": 0.20, "hps_se": 0.010}]
    for seed, (d, e) in enumerate([(0.30, 0.32), (0.34, 0.36)]):
        rows.append({"policy": f"dancegrpo-h-seed{seed}", "algorithm": "dancegrpo", "reward_setting": "h", "hps": d,
                     "hps_se": 0.02, "forward_equivalents": 1000.0, "nfe_total": 900})
        rows.append({"policy": f"egrpo-h-seed{seed}", "algorithm": "egrpo", "reward_setting": "h", "hps": e,
                     "hps_se": 0.04, "forward_equivalents": egrpo_fe, "nfe_total": 900})
    return pd.DataFrame(rows)


def test_table_shows_evaluation_se_and_says_when_compute_differs():
    table = summary_table(per_policy(egrpo_fe=2700.0), ["hps"])
    assert table.set_index("algorithm").loc["egrpo", "hps_eval_se"] == pytest.approx(0.04)
    md = markdown(table, ["hps"])
    assert "| egrpo | h | **0.3400 ± 0.0283 [SE 0.0400]** |" in md
    assert "| base | - | 0.2000 [SE 0.0100] |" in md
    assert "about 2 SE are within evaluation noise" in md
    assert "Not equal compute (h): forward-equivalents relative to dancegrpo: egrpo 2.70x." in md
    assert compute_caveats(summary_table(per_policy(egrpo_fe=1050.0), ["hps"])) == []   # within 10%


def test_unknown_evaluation_se_is_an_empty_cell_not_a_missing_column():
    """One evaluation prompt gives no SE; MLflow then holds no value and the files hold NaN: both
    sources must still give the same columns (egrpo compare against table.csv)."""
    without = per_policy(egrpo_fe=1000.0).drop(columns="hps_se")
    table = summary_table(without, ["hps"])
    assert "hps_eval_se" in table and table["hps_eval_se"].isna().all()
    assert "SE" not in markdown(table, ["hps"])
