"""The report's table: evaluation standard errors and the equal-compute caveat."""
import math

import pandas as pd
import pytest

from egrpo.stages.evaluate import evaluation_se
from egrpo.analysis.tables import compute_caveats, summary_table
from egrpo.analysis.markdown import markdown


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
    assert "| egrpo | h | 0.3400 ± 0.0283 [SE 0.0400] |  |" in md   # no bold, no Δ%: not at equal compute
    assert "| base | - | 0.2000 [SE 0.0100] |" in md
    assert "[SE] the evaluation's standard error of one row's mean" in md
    assert "Not equal compute (h): forward-equivalents relative to dancegrpo: egrpo 2.70x." in md
    assert compute_caveats(summary_table(per_policy(egrpo_fe=1050.0), ["hps"])) == []   # within 10%


def test_unknown_evaluation_se_is_an_empty_cell_not_a_missing_column():
    """One evaluation prompt gives no SE; MLflow then holds no value and the files hold NaN: both
    sources must still give the same columns (egrpo compare against table.csv)."""
    without = per_policy(egrpo_fe=1000.0).drop(columns="hps_se")
    table = summary_table(without, ["hps"])
    assert "hps_eval_se" in table and table["hps_eval_se"].isna().all()
    assert "[SE" not in markdown(table, ["hps"])


def test_the_table_counts_the_requeues_of_runs_stopped_at_a_time_limit():
    from egrpo.analysis.tables import requeue_note

    per_policy = pd.DataFrame({"policy": ["base", "egrpo-color-seed0", "egrpo-color-seed1"],
                               "time_limit_stops": [None, 2, 0]})
    note = requeue_note(per_policy)
    assert note == ("Requeued at a time limit (stops, each resumed from its saved state): egrpo-color-seed0 2; "
                    "2 requeue(s) in all.\n")
    assert requeue_note(per_policy.assign(time_limit_stops=[None, 0, 0])) == ""
    assert requeue_note(per_policy.drop(columns="time_limit_stops")) == ""


def test_heldout_curves_are_read_at_the_common_budget(tmp_path):
    """report/heldout_vs_compute.png: each algorithm's held-out curve read at the smallest final cost of
    all runs (linear interpolation), said in one line; without curves the figure says how to get them."""
    import json

    from egrpo.stages.report import heldout_figure

    def run(algorithm, seed, fe, values):
        path = tmp_path / f"{algorithm}{seed}.json"
        curve = [{"iteration": i, "forward_equivalents": x, "wall_s": i, "heldout_alignment": v}
                 for i, (x, v) in enumerate(zip(fe, values))]
        path.write_text(json.dumps({"algorithm": algorithm, "reward_setting": "color", "seed": seed,
                                    "heldout_curve": curve}))
        return str(path)

    paths = [run("egrpo", 0, [0, 100, 200], [0.1, 0.5, 0.6]), run("egrpo", 1, [0, 100, 200], [0.1, 0.3, 0.4]),
             run("dancegrpo", 0, [0, 50], [0.1, 0.2])]
    line = heldout_figure(paths, tmp_path / "h.png")
    # budget 50: egrpo seeds 0.3 and 0.2 (mean 0.25), dancegrpo 0.2; one seed in common: no verdict
    assert line == ("held-out alignment at equal compute (50 forward-equivalents): egrpo 0.25, dancegrpo 0.2; "
                    "egrpo - dancegrpo: +0.05 (1 common seed(s): no verdict, it takes 3 or more)")
    paths.append(run("dancegrpo", 1, [0, 50], [0.1, 0.15]))   # seeds 0 and 1: +0.1, +0.05
    assert heldout_figure(paths, tmp_path / "h2.png").endswith("(2 common seed(s): no verdict, it takes 3 or more)")
    paths += [run("egrpo", 2, [0, 100], [0.1, 0.36]), run("dancegrpo", 2, [0, 50], [0.1, 0.19])]   # +0.04 at 50
    line = heldout_figure(paths, tmp_path / "h3.png")
    assert line.endswith("egrpo - dancegrpo: +0.0633 (SE 0.019 over 3 seeds): better"), line   # 0.1, 0.05, 0.04
    assert (tmp_path / "h.png").stat().st_size > 0
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"algorithm": "egrpo", "reward_setting": "color", "seed": 0, "heldout_curve": []}))
    assert heldout_figure([str(bare)], tmp_path / "none.png") == "" and (tmp_path / "none.png").is_file()


def test_the_image_grid_reads_each_images_score(tmp_path):
    from PIL import Image

    from egrpo.analysis.plots import _image_scores, policy_image_grid

    for name, values in (("base", [0.1, 0.2]), ("egrpo-color-seed0", [0.7, 0.9])):
        d = tmp_path / name
        (d / "images").mkdir(parents=True)
        pd.DataFrame({"prompt_index": [0, 0], "prompt": ["a red square"] * 2, "image_index": [0, 1],
                      "alignment": values}).to_csv(d / "scores.csv", index=False)
        for i in range(2):
            Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(d / f"images/p0000_i{i}.png")
    files = sorted((tmp_path / "egrpo-color-seed0/images").glob("*.png"))
    assert _image_scores(tmp_path / "egrpo-color-seed0", files, "alignment") == [0.7, 0.9]
    assert _image_scores(tmp_path / "egrpo-color-seed0", files, "hps") == [None, None]
    policy_image_grid([tmp_path / "base", tmp_path / "egrpo-color-seed0"], tmp_path / "grid.png", metric="alignment")
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size[1] > 2 * 96   # two rows of enlarged images under their captions


def test_the_image_grid_spreads_its_columns_over_the_prompts(tmp_path):
    """20 prompts x 2 images, 8 columns: the first image of 8 prompts from the first to the last;
    2 prompts x 2 images: all 4 in order."""
    from egrpo.analysis.plots import grid_images

    for p in range(20):
        for i in range(2):
            (tmp_path / f"p{p:04d}_i{i}.png").touch()
    names = [f.name for f in grid_images(tmp_path, 8)]
    assert len(names) == 8 and all(n.endswith("_i0.png") for n in names)
    assert names[0] == "p0000_i0.png" and names[-1] == "p0019_i0.png"
    assert len({n[:5] for n in names}) == 8
    few = tmp_path / "few"
    few.mkdir()
    for p in range(2):
        for i in range(2):
            (few / f"p{p:04d}_i{i}.png").touch()
    assert [f.name for f in grid_images(few, 8)] == ["p0000_i0.png", "p0000_i1.png", "p0001_i0.png", "p0001_i1.png"]


def test_the_learned_reward_is_drawn_against_the_truth(tmp_path):
    """reward_vs_truth: each run's held-out change of the reward it trains on and of the ground truth
    from the base, mean over seeds, read at the common budget."""
    from egrpo.analysis.curves import reward_vs_truth
    from egrpo.analysis.runs import heldout_table
    from egrpo.stages.report import reward_vs_truth_figure

    def run(seed, tiny, truth):
        return {"algorithm": "egrpo", "reward_setting": "t", "seed": seed, "heldout_curve": [
            {"iteration": i, "forward_equivalents": 100 * i, "wall_s": i, "heldout_tinyclip": a, "heldout_alignment": b}
            for i, (a, b) in enumerate(zip(tiny, truth))]}

    runs = [run(0, [0.3, 0.4, 0.5], [0.6, 0.58, 0.55]), run(1, [0.3, 0.35, 0.45], [0.6, 0.6, 0.57])]
    [line] = reward_vs_truth(heldout_table(runs), {"t": {"tinyclip": 1.0}}, "alignment")
    assert line["trained"] == "tinyclip" and line["tinyclip_at_budget"] == pytest.approx((0.2 + 0.15) / 2)
    assert line["alignment_at_budget"] == pytest.approx((-0.05 - 0.03) / 2)   # the learned reward up, the truth down
    paths = []
    for n, r in enumerate(runs):
        (tmp_path / f"m{n}.json").write_text(__import__("json").dumps(r))
        paths.append(str(tmp_path / f"m{n}.json"))
    cfg = {"reward_settings": {"t": {"tinyclip": 1.0}}, "evaluate": {"metrics": ["alignment"]}}
    reward_vs_truth_figure(cfg, paths, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 10_000


def test_the_truth_is_the_first_metric_some_setting_does_not_train_on():
    """The default trains one setting on the judge itself and one on tinyclip: the judge is still the
    truth tinyclip is drawn against; a metric every setting trains on is none."""
    from egrpo.stages.report import truth_metric

    both = {"judge": {"judge": 1.0}, "tinyclip": {"tinyclip": 1.0}}
    assert truth_metric({"reward_settings": both, "evaluate": {"metrics": ["judge"]}}) == "judge"
    assert truth_metric({"reward_settings": {"t": {"tinyclip": 1.0}}, "evaluate": {"metrics": ["alignment"]}}) == "alignment"
    assert truth_metric({"reward_settings": {"j": {"judge": 1.0}}, "evaluate": {"metrics": ["judge"]}}) is None


def test_the_summary_line_is_the_held_out_verdict_else_the_paired_evaluation():
    """One seed gives the held-out curve no verdict: the line then reads the evaluation's paired
    comparisons on the truth (E-GRPO against DanceGRPO, the best policy against the base)."""
    from egrpo.stages.report import summary_line

    cmp = pd.DataFrame([
        {"reward_setting": "judge", "metric": "judge", "algorithm": "egrpo", "against": "dancegrpo",
         "difference": 0.13, "paired_se": 0.05, "verdict": "better"},
        {"reward_setting": "judge", "metric": "judge", "algorithm": "egrpo", "against": "base",
         "difference": 0.12, "paired_se": 0.04, "verdict": "better"},
        {"reward_setting": "judge", "metric": "judge", "algorithm": "mixgrpo", "against": "base",
         "difference": 0.16, "paired_se": 0.05, "verdict": "better"},
        {"reward_setting": "judge", "metric": "tinyclip", "algorithm": "egrpo", "against": "dancegrpo",
         "difference": -0.03, "paired_se": 0.02, "verdict": "within noise"}])
    unsure = "held-out judge (judge) at equal compute: egrpo 0.37, dancegrpo 0.28; egrpo - dancegrpo: +0.09 (1 common seed(s): no verdict, it takes 3 or more)"
    line = summary_line(unsure, cmp, "judge")
    assert line == ("judge (judge), evaluation: egrpo - dancegrpo +0.1300 (paired SE 0.0500): better; "
                    "best against the base: mixgrpo +0.1600 (paired SE 0.0500): better")
    decided = "held-out judge (judge) at equal compute: egrpo - dancegrpo: +0.09 (SE 0.02 over 8 seeds): better"
    assert summary_line(decided + "\nmore", cmp, "judge") == decided
    assert summary_line(unsure, None, "judge") == unsure and summary_line("", None, None) == "see table.md"
