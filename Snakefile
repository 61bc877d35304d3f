# egrpo: the E-GRPO pipeline. Entry point; rules per stage live in workflow/rules/.
#   snakemake                       whole DAG on the embedded tiny default (config/config.yaml)
#   snakemake -n                    list the jobs
#   snakemake -R threshold          rerun one stage and what depends on it
#   snakemake --configfile config/paper.yaml --profile slurm
# One rule file per stage, one `egrpo <stage>` per rule, one module egrpo/stages/<stage>.py per subcommand.
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")


# The embedded default, unless --configfile names another config: Snakemake would otherwise
# deep-merge the two, and e.g. the default's reward settings would leak into config/paper.yaml.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/build_model.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/profile.smk"
include: "workflow/rules/threshold.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/claims.smk"


rule all:
    input:
        f"{RESULTS}/report/table.csv",
        f"{RESULTS}/report/table.md",
        f"{RESULTS}/report/entropy_plan.png",
        f"{RESULTS}/report/train_reward_vs_nfe.png",
        [f"{RESULTS}/report/claims.md", f"{RESULTS}/report/claims.json"] if config["claims"]["enabled"] else [],


onstart:
    # Every file the DAG reads must be there before any job starts (a dry run only warns, below).
    if INPUT_PROBLEMS:
        for problem in INPUT_PROBLEMS:
            print(f"egrpo: missing input: {problem}", file=sys.stderr)
        sys.exit(f"egrpo: {len(INPUT_PROBLEMS)} missing input(s), listed above; no job was started")
    # A train job over several nodes needs SLURM's srun (egrpo/runtime/launch.py)
    if int(config["resources"]["train"].get("nodes") or 1) > 1 and (
            workflow.executor_plugin is None or workflow.executor_plugin.name != "slurm"):
        sys.exit(f"egrpo: resources.train.nodes is {config['resources']['train']['nodes']}: a train job over several "
                 "nodes runs on SLURM (--profile slurm); set nodes: 1 for this executor")
    # On SLURM: every job must fit some node of its partition, checked before anything is submitted
    # (egrpo/runtime/slurm.py); a request no node can ever give would otherwise pend forever.
    if workflow.executor_plugin is not None and workflow.executor_plugin.name == "slurm":
        from egrpo.runtime.slurm import message, preflight

        try:
            problems = preflight(workflow.dag.needrun_jobs())
        except (OSError, RuntimeError, ValueError) as error:
            problems = []
            print(f"egrpo: slurm preflight skipped: cannot read the partitions ({error})", file=sys.stderr)
        if problems:
            sys.exit(message(problems))
        # ... and fit its runtime by the measured rates within the retries (egrpo/cost.py)
        if PAPER_SCALE:
            from egrpo.cost import runtime_problems

            problems = runtime_problems(config_as_submitted(), workflow.execution_settings.retries + 1)
            if problems:
                sys.exit("egrpo: slurm preflight: jobs that cannot finish by the estimate: " + "; ".join(problems)
                         + " (raise the runtime or the retries, or give the job more GPUs; egrpo cost --config ...)")
    shell("egrpo mlflow-init --config {CONFIG_FILE:q}")


onsuccess:
    summary = Path(RESULTS) / "report" / "summary.txt"
    if summary.is_file():
        print(f"egrpo: the report is {RESULTS}/report/table.md (plots beside it); {summary.read_text().strip()}")


onerror:
    print(f"egrpo: stopped before the end (a job failed or was interrupted; job logs: {LOGS}/). The same command "
          "continues: finished jobs are kept and train jobs resume from their last checkpoint.", file=sys.stderr)
