"""BranchGRPO and DiffusionNFT through the micro DAG (tests/data/micro_baselines.yaml):
their train jobs cost what their closed forms say, their policies are evaluated, and the report and
`egrpo compare` list them like the others."""
import json
import subprocess
import sys

import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def test_branchgrpo_and_diffusionnft_run_through_the_dag(micro_dag_copy):
    work = micro_dag_copy
    run = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "tests/data/micro.yaml",
                          "tests/data/micro_baselines.yaml"], cwd=work, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "rule build_model" not in run.stdout + run.stderr and "rule profile" not in run.stdout + run.stderr
    res = work / "results/micro"
    branch = json.loads((res / "train/branchgrpo/color/seed0/metrics.json").read_text())
    nft = json.loads((res / "train/diffusionnft/color/seed0/metrics.json").read_text())
    # a 6-step tree split at 0 and 2: nodes per step 1, 2, 2, 4, 4, 4; edges 2 + 2 + 4 * 4
    assert branch["nfe_rollout_total"] == 17 and branch["nfe_train_total"] == 20 and branch["nfe_reference_total"] == 0
    # G = 2 samples x 4 dpm2 steps; int(0.99 * 4) = 3 trained sigmas each; old policy + base per trained row
    assert nft["nfe_rollout_total"] == 8 and nft["nfe_train_total"] == 6 and nft["nfe_reference_total"] == 12
    assert nft["forward_equivalents"] == 8 + 3 * 6 + 12
    table = pd.read_csv(res / "report/table.csv")
    assert {"base", "branchgrpo", "diffusionnft"} <= set(table["algorithm"])
    for name in ("branchgrpo", "diffusionnft"):
        assert (res / f"eval/{name}-color-seed0/summary.json").is_file()
    import yaml

    from egrpo.config import load

    merged = load(work / "tests/data/micro.yaml", work / "tests/data/micro_baselines.yaml")
    (work / "merged.yaml").write_text(yaml.safe_dump(merged))   # compare reads one config (two: a comparison)
    compare = subprocess.run([sys.executable, "-m", "egrpo", "compare", "--config", "merged.yaml"],
                             cwd=work, capture_output=True, text=True, timeout=300)
    assert compare.returncode == 0, compare.stderr[-2000:]
    assert "branchgrpo" in compare.stdout and "diffusionnft" in compare.stdout
