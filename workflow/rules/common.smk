# Shared settings and input functions. The config is validated here (one-line errors), written
# once as a resolved, content-addressed YAML that every `egrpo` call reads, and hashed per stage
# so that a config change reruns exactly the stages it affects (Snakemake's params trigger).
import sys

from egrpo.config import ALGORITHMS_USING_PLAN, coerce_strings, config_hash, reward_names, write_resolved
from egrpo.config import validate as egrpo_validate
from egrpo.errors import ConfigError

try:
    coerce_strings(config)
    egrpo_validate(config)
except ConfigError as error:
    sys.exit(f"egrpo: config error: {error}")
validate(config, "../schemas/config.schema.yaml")

EXP = config["experiment"]
RESULTS = f"results/{EXP}"
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
# Every `egrpo` call reads this resolved config. Rules use it as a global, not as params: params
# would rerun every job on any config change; instead each rule's params carry `stage_hash(...)`
# of the sections it reads, so a change reruns exactly the stages it affects.
CONFIG_FILE = str(write_resolved(config, f"{RESULTS}/configs"))
TINY = config["model"]["source"] == "tiny"
MODEL_DIR = f"{RESULTS}/model" if TINY else config["model"]["path"]
PROFILE_SETTING = config["profile"]["reward_setting"] or next(iter(config["reward_settings"]))


wildcard_constraints:
    algorithm="|".join(config["algorithms"]),
    reward_setting="[A-Za-z0-9_]+",
    seed=r"\d+",
    name=r"base|[A-Za-z0-9_]+-[A-Za-z0-9_]+-seed\d+",


def stage_hash(*sections, extra=None):
    """Hash of the config sections a stage reads: a change to them reruns the stage."""
    return config_hash({"sections": {s: config.get(s) for s in sections}, "extra": extra})


def model_input(wildcards=None):
    """The tiny model is built by a rule; a pretrained path is read in place (not a DAG file)."""
    return [MODEL_DIR] if TINY else []


def train_dir(algorithm, reward_setting, seed):
    return f"{RESULTS}/train/{algorithm}/{reward_setting}/seed{seed}"


def train_runs():
    return [(a, r, s) for a in config["algorithms"] for r in config["reward_settings"] for s in config["seeds"]]


def policy_names():
    return ["base"] + [f"{a}-{r}-seed{s}" for a, r, s in train_runs()]


def train_inputs(wildcards):
    """Only algorithms that use the merge plan depend on it: rerunning threshold keeps baselines."""
    inputs = {"model": model_input(), "prompts": config["prompts"]["train"]}
    if wildcards.algorithm in ALGORITHMS_USING_PLAN:
        inputs["plan"] = f"{RESULTS}/plan/plan.json"
    return inputs


def evaluate_inputs(wildcards):
    inputs = {"model": model_input(), "prompts": config["prompts"]["eval"]}
    if wildcards.name != "base":
        algorithm, reward_setting, seed = wildcards.name.rsplit("-", 2)
        run = train_dir(algorithm, reward_setting, seed.removeprefix("seed"))
        inputs["checkpoint"] = f"{run}/checkpoint"
        inputs["metrics"] = f"{run}/metrics.json"
    return inputs
