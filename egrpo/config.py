"""Load a YAML config, fill defaults and validate it against workflow/schemas/config.schema.yaml.

The Snakefile and every `egrpo` subcommand use this module, so a bad key gives the same one-line
error either way. Kept free of torch so that `snakemake -n` stays fast.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from egrpo.errors import ConfigError, UserError
from egrpo.rewards import REWARDS  # light: names and metadata only
from egrpo.runtime.io import load_prompts
from egrpo.runtime.paths import SCHEMA

SCHEMA_PATH = SCHEMA



def _load_schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def _with_defaults(validator_class):
    """A jsonschema validator that writes each property's `default` into the instance."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def coerce_strings(config: Any, schema: dict | None = None, root: dict | None = None) -> Any:
    """Turn numeric strings into numbers where the schema expects them.

    Snakemake's `--config 'seeds=[0]'` hands list items and nested values over as strings;
    this makes such overrides behave like the same values written in a YAML file.
    """
    root = root or schema or _load_schema()
    schema = schema or root
    if "$ref" in schema:
        node = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    if isinstance(config, str):
        if "integer" in types and re.fullmatch(r"[+-]?\d+", config.strip()):
            return int(config)
        if "number" in types:
            try:
                return float(config)
            except ValueError:
                return config
        if "null" in types and config.strip().lower() in ("null", "none", "~"):
            return None
        return config
    if isinstance(config, list) and isinstance(schema.get("items"), dict):
        return [coerce_strings(v, schema["items"], root) for v in config]
    if isinstance(config, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, value in config.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                config[key] = coerce_strings(value, sub, root)
    return config


def _key_path(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    return path or "<top level>"


def _one_line(error: jsonschema.ValidationError) -> str:
    msg = error.message
    if error.validator == "additionalProperties":
        msg = msg.replace("Additional properties are not allowed", "unknown key")
        allowed = sorted(error.schema.get("properties", {}))
        if allowed:
            return f"{_key_path(error)}: {msg}; allowed: {', '.join(allowed)}"
    if error.validator == "enum":
        msg = f"{error.instance!r} is not one of {error.validator_value}"
    if len(msg) > 200:
        msg = msg[:200] + "…"
    return f"{_key_path(error)}: {msg}"


def validate(config: dict) -> dict:
    """Fill defaults in place, validate, check cross-field rules; raise ConfigError (one line)."""
    if not isinstance(config, dict):
        raise ConfigError(f"the config must be a mapping, got {type(config).__name__}")
    train = config.get("train")
    reward_models = config.get("reward_models")
    for name, settings in (reward_models.items() if isinstance(reward_models, dict) else ()):
        if isinstance(settings, dict) and "dtype" in settings:
            raise ConfigError(f"reward_models.{name}.dtype: renamed to precision (float32, amp, bfloat16 or "
                              "float16; unset = the original's, docs/rewards.md)")
    if isinstance(train, dict) and "optimizer_step" in train:
        raise ConfigError("train.optimizer_step: moved to algorithm_params.<algorithm>.optimizer_step (each "
                          "algorithm defaults to its published recipe; see docs/baselines.md)")
    schema = _load_schema()
    resources = config.get("resources")
    if isinstance(resources, dict):   # a rule's own entries on top of its defaults, not instead of them
        for rule, spec in schema["properties"]["resources"]["properties"].items():
            if isinstance(resources.get(rule), dict):
                resources[rule] = {**spec["default"], **resources[rule]}
    validator = _Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), e.path))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        raise ConfigError(_one_line(best))
    _check_semantics(config)
    return config


def _check_semantics(cfg: dict) -> None:

    n = cfg["sampling"]["num_steps"]
    for setting, weights in cfg["reward_settings"].items():
        for reward in weights:
            if reward not in REWARDS:
                raise ConfigError(f"reward_settings.{setting}.{reward}: unknown reward; "
                                  f"expected one of {sorted(REWARDS)}")
    for reward in cfg["evaluate"]["metrics"]:
        if reward not in REWARDS:
            raise ConfigError(f"evaluate.metrics: unknown reward {reward!r}; expected one of {sorted(REWARDS)}")
    if heldout_enabled(cfg):
        for reward in cfg["train"]["heldout"]["metrics"]:
            if reward not in REWARDS:
                raise ConfigError(f"train.heldout.metrics: unknown reward {reward!r}; expected one of {sorted(REWARDS)}")
    for reward in reward_names(cfg):
        if "path" in REWARDS[reward].needs and reward not in cfg["reward_models"]:
            raise ConfigError(f"reward_models.{reward}: reward {reward!r} needs {REWARDS[reward].needs}")
    c = cfg["claims"]
    if c["enabled"]:
        if c["reward_setting"] is None:
            c["reward_setting"] = next(iter(cfg["reward_settings"]))
        if c["reward_setting"] not in cfg["reward_settings"]:
            raise ConfigError(f"claims.reward_setting: {c['reward_setting']!r} is not a key of reward_settings")
        if not heldout_enabled(cfg) or c["heldout_metric"] not in cfg["train"]["heldout"]["metrics"]:
            raise ConfigError(f"claims.heldout_metric: {c['heldout_metric']!r} must be measured during training "
                              "(set train.heldout.every and list it in train.heldout.metrics)")
        if "egrpo" not in cfg["algorithms"] or "dancegrpo" not in cfg["algorithms"]:
            raise ConfigError("claims.enabled: the claims compare egrpo with dancegrpo; list both in algorithms")
    if cfg["health"]["kl_to_base"] and cfg["train"]["sharding"] != "none":
        # its reference forwards run on the first update unit only, which padded processes skip: a
        # sharded reference would leave the processes' collectives out of step
        raise ConfigError("health.kl_to_base: not measured under train.sharding (yet); set sharding: none or "
                          "kl_to_base: false")
    if "diffusionnft" in cfg["algorithms"] and cfg["train"]["sharding"] != "none":
        raise ConfigError("algorithms: diffusionnft does not train under train.sharding fsdp (its old policy is an "
                          "unsharded copy of the trained weights); set sharding: none (LoRA: config/paper-nft.yaml)")
    if cfg["pretrain"]["undersized"]["fraction"] > 0 and cfg["pretrain"]["world"] != "compositional":
        raise ConfigError("pretrain.undersized: shrinks the objects of the compositional world's scenes; "
                          "set pretrain.world: compositional or undersized.fraction: 0")
    rs = cfg["profile"]["reward_setting"]
    if rs is not None and rs not in cfg["reward_settings"]:
        raise ConfigError(f"profile.reward_setting: {rs!r} is not a key of reward_settings "
                          f"({sorted(cfg['reward_settings'])})")
    th = cfg["threshold"]
    if th["rule"] == "fixed" and th["tau"] is None:
        raise ConfigError("threshold.tau: rule 'fixed' needs a number")
    if th["rule"] == "reference_step" and th["reference_step"] >= n:
        raise ConfigError(f"threshold.reference_step: {th['reference_step']} must be < sampling.num_steps ({n})")
    if th["max_steps"] is not None and th["max_steps"] > n:
        raise ConfigError(f"threshold.max_steps: {th['max_steps']} must be <= sampling.num_steps ({n})")
    if th["rule"] == "manual":
        if not th["plan"]:
            raise ConfigError("threshold.plan: rule 'manual' needs a non-empty list of [start, length]")
        end = 0
        for start, length in th["plan"]:
            if start < end or length < 1 or start + length > n:
                raise ConfigError(f"threshold.plan: entry [{start}, {length}] must have length >= 1, "
                                  f"not overlap the previous one and end at or before num_steps ({n})")
            end = start + length
    m, train = cfg["model"], cfg["train"]
    job = (cfg.get("resources") or {}).get("train", {})
    nodes, gpus = int(job.get("nodes") or 1), int(job.get("gpu") or 0)
    processes = nodes * max(gpus, 1)
    if processes > 1 and train["prompts_per_iteration"] % processes:
        raise ConfigError(f"train.prompts_per_iteration: {train['prompts_per_iteration']} prompts per iteration cannot "
                          f"be split evenly over the train job's {processes} processes (resources.train: {nodes} "
                          f"node(s) x {max(gpus, 1)})")
    for rule, sizes in (cfg.get("resources") or {}).items():
        if rule != "train" and int(sizes.get("nodes") or 1) > 1:
            raise ConfigError(f"resources.{rule}.nodes: only the train job runs over several nodes")
    if train["sharding"] == "fsdp" and train["finetune"] != "full":
        raise ConfigError("train.sharding: fsdp shards full fine-tuning (train.finetune: full); a LoRA adapter "
                          "is small enough for every process to hold it (sharding: none)")
    if train["sharding"] == "fsdp" and train["mixed_precision"] == "fp16":
        raise ConfigError("train.mixed_precision: fp16 needs a loss scaler, which the sharded path does not run; use bf16")
    if train["sharding"] == "fsdp" and m["compile"]:
        raise ConfigError("model.compile: not supported with train.sharding fsdp (the compiled module would "
                          "bypass FSDP's gathers); set one of them off")
    if m["source"] == "pretrain" and m["family"] not in (None, "flux"):
        raise ConfigError(f"model.family: {m['family']!r} cannot be pretrained; `egrpo pretrain` trains the tiny world's "
                          "FLUX (use model.source tiny for a tiny random model of another family)")
    if m["source"] == "pretrained" and not m["path"]:
        raise ConfigError("model.path: model.source 'pretrained' needs a local path or Hub id")
    res = cfg["sampling"]["resolution"]
    if m["source"] in ("tiny", "pretrain"):
        multiple = 2 ** m["tiny"]["vae_blocks"]
        if res % multiple:
            raise ConfigError(f"sampling.resolution: {res} must be a multiple of {multiple} "
                              f"(2 x the VAE downsampling of model.tiny.vae_blocks)")
        t = m["tiny"]
        if t["head_dim"] % 4:
            raise ConfigError("model.tiny.head_dim: must be a multiple of 4 (rotary axes)")


def check_overrides(overrides: dict) -> None:
    """`snakemake --config key=value` values: Snakemake deep-merges a mapping into the config file's,
    so an empty one (e.g. `reward_settings={}`) silently changes nothing. Refuse it in one line."""
    for key, value in (overrides or {}).items():
        if hasattr(value, "keys") and len(value) == 0:
            raise ConfigError(f"--config {key}={{}}: an empty mapping on the command line changes nothing (Snakemake "
                              f"merges it into the config file's {key}); edit the config file or give the entries, "
                              f"e.g. --config '{key}={{name: {{...}}}}'")


def _read(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None


def overlay(base: dict, top: dict) -> dict:
    """`snakemake --configfile base.yaml top.yaml`: mappings merge key by key, top's other values win."""
    out = dict(base)
    for key, value in top.items():
        out[key] = overlay(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load(path: str | os.PathLike, *overlays: str | os.PathLike) -> dict:
    """Read a YAML config file (and overlays on it, merged as Snakemake merges several --configfile)
    and validate it; errors name the file and the key."""
    paths = [Path(p) for p in (path, *overlays)]
    cfg = None
    for p in paths:
        part = _read(p)
        cfg = part if cfg is None else overlay(cfg, part) if isinstance(cfg, dict) and isinstance(part, dict) else part
    try:
        # PyYAML reads 3e-3 (no dot) as a string: numbers are coerced where the schema wants one
        return validate(coerce_strings(cfg) if isinstance(cfg, dict) else (cfg if cfg is not None else {}))
    except ConfigError as e:
        raise ConfigError(f"{' + '.join(map(str, paths))}: {e}") from None


def config_hash(cfg: Any) -> str:
    """Short stable hash of a (sub-)config, used to name resolved configs and as rule params."""
    blob = json.dumps(cfg, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def write_resolved(cfg: dict, directory: str | os.PathLike, write: bool = True) -> Path:
    """Write the validated config to <directory>/<hash>.yaml once (content-addressed) and return the
    path; with write False (a dry run) only the path."""
    directory = Path(directory)
    path = directory / f"{config_hash(cfg)}.yaml"
    if write and not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
        os.replace(tmp, path)
    return path


def heldout_enabled(cfg: dict) -> bool:
    h = cfg["train"]["heldout"]
    return h["every"] is not None or h["every_forward_equivalents"] is not None


def reward_names(cfg: dict) -> list[str]:
    """Every reward the config mentions: those of the reward settings, then evaluate.metrics."""
    names: list[str] = []
    for weights in cfg["reward_settings"].values():
        names += [r for r in weights if r not in names]
    names += [r for r in cfg["evaluate"]["metrics"] if r not in names]
    if heldout_enabled(cfg):
        names += [r for r in cfg["train"]["heldout"]["metrics"] if r not in names]
    return names


def _missing(key: str, path: str, what: str) -> str | None:
    """None if `path` is a local file/directory or a Hub id already in the Hugging Face cache."""
    if Path(path).exists():
        return None
    hub_id = path.count("/") == 1 and not path.startswith((".", "/", "~"))
    if hub_id:
        from huggingface_hub.constants import HF_HUB_CACHE

        snapshots = Path(HF_HUB_CACHE) / f"models--{path.replace('/', '--')}" / "snapshots"
        if snapshots.is_dir() and any(snapshots.iterdir()):
            return None
        return (f"{key}: {path} is neither a local path nor in the Hugging Face cache ({HF_HUB_CACHE}); nothing is "
                f"downloaded at run time: fetch {what} once (e.g. `hf download {path}`) or set {key} to a local copy")
    return f"{key}: {path} does not exist; set {key} to {what}"


def input_problems(cfg: dict) -> list[str]:
    """Every file the DAG will read that is not there (model, reward weights and tokenizers, prompt
    files), one line each; the Snakefile stops on them before any job starts (onstart)."""

    problems = []
    if cfg["model"]["source"] == "pretrained":
        problems.append(_missing("model.path", cfg["model"]["path"],
                                 f"the {cfg['model'].get('family') or 'FLUX'} pipeline directory"))
    for name in reward_names(cfg):
        settings = cfg["reward_models"].get(name)
        produced = f"results/{cfg['experiment']}/"   # written by a rule of this DAG (pretrain)
        if settings is None or "path" not in REWARDS[name].needs or settings["path"].startswith(produced):
            continue
        problems.append(_missing(f"reward_models.{name}.path", settings["path"], f"the {name} weights"))
        if settings.get("processor"):
            problems.append(_missing(f"reward_models.{name}.processor", settings["processor"], f"the {name} tokenizer"))
    for key in ("train", "eval", "benchmark"):
        if not cfg["prompts"].get(key):
            continue
        try:
            prompts = load_prompts(cfg["prompts"][key], f"prompts.{key}")
        except UserError as error:
            problems.append(str(error))
            continue
        if _tiny_world_prompts(prompts) and not tiny_world_model(cfg):
            problems.append(f"prompts.{key}: {cfg['prompts'][key]} holds the tiny world's captions, not prompts for "
                            f"{cfg['model']['path']}; write the paper's prompt files with `egrpo prompts` "
                            "(docs/paper-data.md)")
    return [p for p in problems if p]


def _tiny_world_prompts(prompts) -> bool:
    """Every prompt is a tiny-world caption ("a small red circle on the left of a blue background")."""
    from egrpo.tinyworld import parse  # here: it imports torch, which `snakemake -n` does not need

    return bool(prompts) and all(parse(p.text) is not None for p in prompts)


def tiny_world_model(cfg: dict) -> bool:
    """A model of the tiny world: built (tiny) or trained (pretrain) by the DAG, or a local pretrained
    directory that `egrpo pretrain` wrote (its pretrain.json beside it, as models/ ships it)."""
    m = cfg["model"]
    if m["source"] != "pretrained":
        return True
    path = Path(str(m["path"]))
    return path.exists() and (path.parent / "pretrain.json").is_file()


def profile_reward_setting(cfg: dict) -> str:
    """The reward setting the profile measures: profile.reward_setting, else the first one."""
    return cfg["profile"]["reward_setting"] or next(iter(cfg["reward_settings"]))
