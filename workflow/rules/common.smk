# Shared settings and input functions. The config is validated here (one-line errors), written
# once as a resolved, content-addressed YAML that every `egrpo` call reads, and hashed per stage
# so that a config change reruns exactly the stages it affects (Snakemake's params trigger).
import os
import re
import sys

from egrpo.algorithms.facts import uses_plan
from egrpo.config import check_overrides, coerce_strings, config_hash, input_problems, profile_reward_setting
from egrpo.config import reward_names, tiny_world_model, write_resolved
from egrpo.config import validate as egrpo_validate
from egrpo.errors import ConfigError

# Job logs are files: a progress bar redrawn ten times a second fills them with thousands of lines,
# and Snakemake prints a failed or interrupted job's whole log (show-failed-logs). In jobs a bar is
# redrawn at most every 30 s; the train job's status line (stdout, every 30 s) is what the terminal shows.
os.environ.setdefault("TQDM_MININTERVAL", "30")

# model.source "pretrain": the pretrain rule trains the base model and the tinyclip reward; the
# reward reads the rule's output unless reward_models.tinyclip names another path.
if config.get("model", {}).get("source") == "pretrain":
    config.setdefault("reward_models", {}).setdefault(
        "tinyclip", {"path": f"results/{config.get('experiment')}/pretrain/tinyclip"})

try:
    check_overrides(dict(workflow.config_settings.config))
    coerce_strings(config)
    egrpo_validate(config)
except ConfigError as error:
    sys.exit(f"egrpo: config error: {error}")
validate(config, "../schemas/config.schema.yaml")
# --set-resources train:gpu=N sets the job's total, but a job over several nodes asks its GPUs per node
# (train_resources below): refused in one line rather than submitted with a gres that does not match
_SET = workflow.resource_settings._parsed_overwrite_resources \
    if getattr(workflow.resource_settings, "overwrite_resources", None) else {}
_TRAIN_SET = _SET.get("train", {})
if int(config["resources"]["train"].get("nodes") or 1) > 1 and "gpu" in _TRAIN_SET:
    _gpu = getattr(_TRAIN_SET["gpu"], "value", _TRAIN_SET["gpu"])
    sys.exit(f"egrpo: config error: --set-resources train:gpu={_gpu} with resources.train.nodes = "
             f"{config['resources']['train']['nodes']}: GPUs are per node there; set them with "
             f"--config 'resources={{\"train\": {{\"gpu\": {_gpu}, \"nodes\": "
             f"{config['resources']['train']['nodes']}}}}}' (or in the config file)")

# Files the DAG reads (model, reward weights, tokenizers, prompts): a run stops on any that is
# missing in `onstart`, before a job waits for a GPU; a dry run (-n) resolves without them and says so.
INPUT_PROBLEMS = input_problems(config)
# (the executor, and with it workflow.dryrun, is not known while the Snakefile is parsed)
DRY_RUN = any(a in ("--dry-run", "--dryrun") or (re.fullmatch(r"-[A-Za-z]+", a) and "n" in a) for a in sys.argv[1:])
if INPUT_PROBLEMS and DRY_RUN:
    for problem in INPUT_PROBLEMS:
        print(f"egrpo: a run would stop here: {problem}", file=sys.stderr)
# What a paper-scale config costs, before any allocation (egrpo/cost.py; a tiny model: nothing to say,
# and torch is not imported for it)
PAPER_SCALE = not tiny_world_model(config)


def config_as_submitted():
    """The config with --set-resources applied to its resources (what the jobs will ask for)."""
    resources = {rule: {**values, **{k: getattr(v, "value", v) for k, v in _SET.get(rule, {}).items()}}
                 for rule, values in config["resources"].items()}
    return {**config, "resources": resources}


if DRY_RUN and PAPER_SCALE:
    from egrpo.cost import runtime_problems, summary

    if (line := summary(config)) is not None:
        print(f"egrpo: cost: {line}", file=sys.stderr)
    # (a dry run does not know the retries yet: every job that needs more than one runtime is named)
    for problem in runtime_problems(config_as_submitted(), None):
        print(f"egrpo: on SLURM: {problem}", file=sys.stderr)

EXP = config["experiment"]
RESULTS = f"results/{EXP}"
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
# Every `egrpo` call reads this resolved config. Rules use it as a global, not as params: params
# would rerun every job on any config change; instead each rule's params carry `stage_hash(...)`
# of the sections it reads, so a change reruns exactly the stages it affects.
CONFIG_FILE = str(write_resolved(config, f"{RESULTS}/configs", write=not DRY_RUN))   # a dry run writes nothing
SOURCE = config["model"]["source"]
TINY = SOURCE == "tiny"
MODEL_DIR = {"tiny": f"{RESULTS}/model", "pretrain": f"{RESULTS}/pretrain/tinyworld"}.get(SOURCE, config["model"]["path"])
PROFILE_SETTING = profile_reward_setting(config)


wildcard_constraints:
    algorithm="|".join(config["algorithms"]),
    reward_setting="[A-Za-z0-9_]+",
    seed=r"\d+",
    name=r"base|[A-Za-z0-9_]+-[A-Za-z0-9_]+-seed\d+",


def scored_reward_models(setting):
    """The reward_models entries a train job reads: those of its setting's rewards and held-out metrics."""
    names = set(config["reward_settings"][setting]) | set(config["train"]["heldout"].get("metrics") or [])
    return {name: config.get("reward_models", {}).get(name) for name in sorted(names)}


def stage_hash(*sections, extra=None):
    """Hash of the config sections a stage reads: a change to them reruns the stage."""
    return config_hash({"sections": {s: config.get(s) for s in sections}, "extra": extra})


def model_input(wildcards=None):
    """The base model and the local reward models the config uses. The tiny model and the pretrain
    outputs come from rules; a local pretrained directory (e.g. the shipped models/tinyworld) is a
    plain input, never the output of a rule; a Hub id is not a file and is not listed."""
    paths = [MODEL_DIR] + [config["reward_models"][r]["path"] for r in reward_names(config)
                           if r in config["reward_models"]]
    produced = (f"{RESULTS}/model", f"{RESULTS}/pretrain/")
    return [p for p in dict.fromkeys(paths) if p.startswith(produced) or os.path.exists(p)]


def prompt_file(key):
    """prompts.<key> as a job input when it exists; a missing one is a preflight problem (listed by a
    dry run, stopping a real run in onstart), not a DAG that cannot resolve."""
    path = config["prompts"].get(key)
    return [path] if path and os.path.exists(path) else []


def train_dir(algorithm, reward_setting, seed):
    return f"{RESULTS}/train/{algorithm}/{reward_setting}/seed{seed}"


def train_runs():
    return [(a, r, s) for a in config["algorithms"] for r in config["reward_settings"] for s in config["seeds"]]


def policy_names():
    return ["base"] + [f"{a}-{r}-seed{s}" for a, r, s in train_runs()]


def train_resources():
    """resources.train for Snakemake. One node: as written (`gpu` GPUs). Several nodes (SLURM): the
    slurm plugin's `mpi` path, under which the batch script runs the rule's own srun (one task per
    node, `tasks` = nodes) instead of wrapping the job in a one-task step; `gpu` becomes the
    per-node gres `gpu:<n>` (the plugin's `gpu` is the job's total) and the per-node count is kept
    as `gpus_per_node` for the launcher."""
    job = dict(config["resources"]["train"])
    nodes = int(job.get("nodes") or 1)
    if nodes == 1:
        return job
    gpus = int(job.pop("gpu", 0) or 0)
    job.update(nodes=nodes, tasks=nodes, mpi="srun", tasks_per_gpu=0, gpus_per_node=gpus)
    if gpus:
        job["gres"] = f"gpu:{gpus}"
    return job


def train_launcher(resources):
    """Several nodes: srun starts one `egrpo train --nodes N` per node (egrpo/runtime/launch.py); a task
    that fails ends the others (--kill-on-bad-exit)."""
    nodes = int(resources.get("nodes", 1) or 1)
    if nodes == 1:
        return ""
    cpus = f" --cpus-per-task={resources.get('cpus_per_task')}" if resources.get("cpus_per_task") else ""
    return f"srun --nodes={nodes} --ntasks-per-node=1{cpus} --kill-on-bad-exit=1 "


def train_inputs(wildcards):
    """Only algorithms that use the merge plan depend on it: rerunning threshold keeps baselines."""
    inputs = {"model": model_input(), "prompts": prompt_file("train")}
    if uses_plan(wildcards.algorithm):
        inputs["plan"] = f"{RESULTS}/plan/plan.json"
    return inputs


def evaluate_inputs(wildcards):
    inputs = {"model": model_input(), "prompts": prompt_file("eval"), "benchmark": prompt_file("benchmark")}
    if wildcards.name != "base":
        algorithm, reward_setting, seed = wildcards.name.rsplit("-", 2)
        run = train_dir(algorithm, reward_setting, seed.removeprefix("seed"))
        inputs["checkpoint"] = f"{run}/checkpoint"
        inputs["metrics"] = f"{run}/metrics.json"
    return inputs


def pretrain_report():
    """The base model's pretrain.json (alignment vs chance), when there is one: the pretrain rule's,
    or the one shipped beside a local pretrained model (models/pretrain.json)."""
    if SOURCE == "pretrain":
        return [f"{RESULTS}/pretrain/pretrain.json"]
    shipped = os.path.join(os.path.dirname(os.path.normpath(str(MODEL_DIR))), "pretrain.json")
    return [shipped] if SOURCE == "pretrained" and os.path.isfile(shipped) else []
