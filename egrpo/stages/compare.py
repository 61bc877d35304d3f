"""`egrpo compare`: the report's table straight from the MLflow store (printed, optionally as CSV)."""
from __future__ import annotations

import sys

import pandas as pd

from egrpo.analysis.markdown import markdown
from egrpo.analysis.runs import config_differences, per_policy_from_mlflow
from egrpo.analysis.tables import summary_table
from egrpo.config import load, reward_names
from egrpo.errors import UserError
from egrpo.runtime.io import atomic_write_text

NAME = "compare"
HELP = ("Print the report's table straight from the MLflow store (and write it as CSV): the evaluate runs of the "
        "config's experiment in its mlflow.tracking_uri, kept to the config's algorithms, reward settings and seeds "
        "(runs made by hand with other seeds are left out).")
CONFIG = "config/config.yaml"


def add_arguments(p) -> None:
    p.add_argument("variants", nargs="*", metavar="CONFIG",
                   help="configs to show side by side (each with its own runs), with the keys where they differ")
    p.add_argument("--filter", default="", help="extra MLflow filter, e.g. \"tags.reward_setting = 'tinyclip'\"")
    p.add_argument("--out", help="CSV file to write")


def run(args, cfg) -> None:
    if args.variants:
        run_variants(args.variants, args.filter, args.out)
    else:
        run_compare(cfg, args.filter, args.out)


def run_variants(paths: list[str], filter_string: str = "", out_csv: str | None = None) -> pd.DataFrame:
    """Several configs side by side: each one's table from its own runs, a `variant` column, and the
    keys where the configs differ."""
    configs = [load(p) for p in paths]
    for path, other in zip(paths[1:], configs[1:]):
        diff = config_differences(configs[0], other)
        print(f"{paths[0]} -> {path}: {len(diff)} key(s) differ" + "".join(f"\n  {d}" for d in diff))
    tables = []
    for path, cfg in zip(paths, configs):
        print(f"\n## {path}\n")
        tables.append(run_compare(cfg, filter_string).assign(variant=path))
    table = pd.concat(tables, ignore_index=True)
    if out_csv:
        atomic_write_text(out_csv, table.to_csv(index=False))
    return table


def run_compare(cfg: dict, filter_string: str = "", out_csv: str | None = None) -> pd.DataFrame:
    """`egrpo compare`: the report's table straight from MLflow (printed as Markdown, optional CSV)."""
    per_policy = per_policy_from_mlflow(cfg, filter_string)
    if not per_policy.empty:   # the config's runs only: a hand run with another seed is not in its table
        wanted = {f"{a}-{r}-seed{s}" for a in cfg["algorithms"] for r in cfg["reward_settings"] for s in cfg["seeds"]}
        keep = per_policy["policy"].isin(wanted | {"base"})
        if (~keep).any():
            print(f"egrpo compare: left out {int((~keep).sum())} run(s) outside the config's algorithms, reward "
                  f"settings and seeds: {', '.join(per_policy.loc[~keep, 'policy'])}", file=sys.stderr)
        per_policy = per_policy[keep]
    if per_policy.empty:
        raise UserError(f"no finished runs in MLflow experiment {cfg['experiment']!r}"
                        + (f" matching {filter_string!r}" if filter_string else ""))
    metrics = [m for m in reward_names(cfg) if m in per_policy]
    table = summary_table(per_policy, metrics)
    print(markdown(table, metrics), end="")
    if out_csv:
        atomic_write_text(out_csv, table.to_csv(index=False))
    return table
