"""Config validation: defaults, overrides, and one-line errors that name the key."""

import pytest

from helpers import micro_config
from egrpo.config import coerce_strings, load, validate
from egrpo.errors import ConfigError


def test_shipped_configs_validate_and_fill_defaults(tmp_path):
    cfg = load("config/config.yaml")
    assert cfg["algorithms"] == ["egrpo", "dancegrpo", "mixgrpo"] and list(cfg["reward_settings"]) == ["judge", "tinyclip"]
    assert cfg["pretrain"]["world"] == "compositional" and cfg["train"]["max_forward_equivalents"] == 31000
    one = load("config/tinyworld.yaml")
    assert one["algorithms"] == ["egrpo", "dancegrpo"] and one["pretrain"]["world"] == "single"
    cfg = validate(micro_config(tmp_path))
    assert cfg["threshold"]["max_steps"] is None
    assert cfg["algorithm_params"]["egrpo"]["granular_list"] == [1, 2]
    assert cfg["evaluate"]["seed"] == 1234


def test_paper_config_and_its_one_gpu_overlay():
    """paper.yaml asks for the official setup (full fine-tuning sharded over 8 GPUs, 8 prompts per
    step); the overlay, merged as Snakemake merges --configfile a b, trains LoRA on one GPU."""
    import yaml
    from snakemake.utils import update_config

    paper = load("config/paper.yaml")
    assert paper["train"]["finetune"] == "full" and paper["train"]["sharding"] == "fsdp"
    assert paper["resources"]["train"]["gpu"] == 8 and paper["train"]["prompts_per_iteration"] == 8
    merged = yaml.safe_load(open("config/paper.yaml"))
    update_config(merged, yaml.safe_load(open("config/paper-1gpu.yaml")))
    one = validate(merged)
    assert one["train"]["finetune"] == "lora" and one["train"]["sharding"] == "none"
    assert one["resources"]["train"]["gpu"] == 1 and one["resources"]["evaluate"]["gpu"] == 1
    assert paper["resources"]["evaluate"]["gpu"] == 8 and paper["evaluate"]["batch_size"] == 4
    assert {k: v for k, v in one["train"].items() if k not in ("finetune", "sharding", "lora_rank", "lora_alpha")} == \
        {k: v for k, v in paper["train"].items() if k not in ("finetune", "sharding", "lora_rank", "lora_alpha")}


def test_official_plan_overlay_and_the_family_configs():
    """paper-official-plan.yaml gives VisualGRPO train_grpo_merge.sh's steps [1, 2, 3] unmerged (never
    step 0) where paper.yaml's threshold also trains step 0; sd35.yaml and qwenimage.yaml validate on
    their families with their recipes' samplers."""
    import yaml
    from snakemake.utils import update_config

    from egrpo.plan import make_plan

    merged = yaml.safe_load(open("config/paper.yaml"))
    update_config(merged, yaml.safe_load(open("config/paper-official-plan.yaml")))
    official = validate(coerce_strings(merged))
    assert [(e["start"], e["length"]) for e in make_plan(official, None)["plan"]] == [(1, 1), (2, 1), (3, 1)]
    assert official["experiment"] == "paper_official_plan"
    # DanceGRPO's 16 GPUs on 2 nodes: the overlay keeps paper.yaml's recipe and the other jobs' GPUs
    merged = yaml.safe_load(open("config/paper.yaml"))
    update_config(merged, yaml.safe_load(open("config/paper-dancegrpo-2nodes.yaml")))
    dance = validate(coerce_strings(merged))
    assert dance["resources"]["train"]["nodes"] == 2 and dance["resources"]["train"]["gpu"] == 8
    assert dance["resources"]["evaluate"]["gpu"] == 8 and dance["train"]["prompts_per_iteration"] == 16
    assert dance["train"]["gradient_checkpointing"] and dance["algorithms"] == ["dancegrpo"]
    merged["train"]["prompts_per_iteration"] = 8
    with pytest.raises(ConfigError, match="split evenly over the train job's 16 processes"):
        validate(coerce_strings(merged))
    paper_plan = make_plan(load("config/paper.yaml"), None)["plan"]
    assert paper_plan[0]["start"] == 0 and [e["length"] for e in paper_plan].count(2) == 2
    sd35, qwen = load("config/sd35.yaml"), load("config/qwenimage.yaml")
    assert sd35["model"]["family"] == "sd3" and sd35["sampling"]["schedule"] == "pipeline"
    assert (sd35["sampling"]["num_steps"], sd35["sampling"]["guidance"], sd35["sampling"]["group_size"],
            sd35["sampling"]["resolution"]) == (10, 4.5, 24, 512)
    assert (sd35["train"]["lora_rank"], sd35["train"]["lora_alpha"], sd35["train"]["learning_rate"]) == (32, 64, 3e-4)
    assert sd35["algorithm_params"]["flowgrpo"]["kl_beta"] == 0.01 and sd35["evaluate"]["num_steps"] == 40
    assert qwen["model"]["family"] == "qwenimage" and qwen["sampling"]["guidance"] == 1.0
    assert (qwen["sampling"]["num_steps"], qwen["sampling"]["resolution"], qwen["sampling"]["group_size"]) == (20, 720, 12)



def test_diffusionnft_and_branchgrpo_overlays():
    """config/paper-branchgrpo.yaml adds BranchGRPO's script recipe to paper.yaml; config/sd35-nft.yaml is DiffusionNFT's sd3_pickscore / sd3_hpsv2 recipes over sd35.yaml (no CFG in
    training or evaluation, 48 prompts, 40 evaluation steps); config/paper-nft.yaml adds it to paper.yaml
    as LoRA without FSDP, which it needs (refused in one line otherwise)."""
    nft = load("config/sd35.yaml", "config/sd35-nft.yaml")
    assert nft["algorithms"] == ["diffusionnft"] and set(nft["reward_settings"]) == {"pickscore", "hps"}
    assert (nft["sampling"]["guidance"], nft["evaluate"]["guidance"], nft["evaluate"]["num_steps"]) == (1.0, 1.0, 40)
    assert (nft["train"]["prompts_per_iteration"], nft["sampling"]["group_size"], nft["train"]["learning_rate"]) == (48, 24, 3e-4)
    p = nft["algorithm_params"]["diffusionnft"]
    assert (p["num_steps"], p["solver"], p["beta"], p["decay_type"], p["kl_beta"]) == (10, "dpm2", 1.0, 1, 1e-4)
    paper = load("config/paper.yaml", "config/paper-nft.yaml")
    assert "diffusionnft" in paper["algorithms"] and paper["train"]["sharding"] == "none"
    assert (paper["train"]["finetune"], paper["train"]["lora_rank"], paper["train"]["lora_alpha"]) == ("lora", 32, 64)
    branch = load("config/paper.yaml", "config/paper-branchgrpo.yaml")
    assert branch["algorithms"] == ["egrpo", "dancegrpo", "branchgrpo"] and branch["train"]["sharding"] == "fsdp"
    b = branch["algorithm_params"]["branchgrpo"]
    assert (b["num_steps"], b["split_points"], b["split_noise"], b["clip_range"], b["edges_per_step"]) == (20, [0, 3, 6, 9], 4.0, 1e-3, 12)
    bad = load("config/paper.yaml")
    bad["algorithms"] = ["egrpo", "diffusionnft"]
    with pytest.raises(ConfigError, match="diffusionnft does not train under train.sharding fsdp"):
        validate(bad)

BAD = [
    ({"sampling": {"group_size": 1}}, "sampling.group_size"),
    ({"sampling": {"eta": -0.1}}, "sampling.eta"),
    ({"sampling": {"num_steps": 0}}, "sampling.num_steps"),
    ({"sampling": {"resolution": 18}}, "sampling.resolution"),
    ({"algorithms": ["egrpo", "nope"]}, "algorithms.1"),
    ({"reward_settings": {"x": {"no_such_reward": 1.0}}}, "reward_settings.x.no_such_reward"),
    ({"reward_settings": {"bad-name": {"prompt_color": 1.0}}}, "reward_settings"),
    ({"seeds": []}, "seeds"),
    ({"train": {"iterations": "many"}}, "train.iterations"),
    ({"trian": {}}, "unknown key"),
    ({"threshold": {"rule": "fixed"}}, "threshold.tau"),
    ({"threshold": {"rule": "manual", "plan": [[0, 2], [1, 1]]}}, "threshold.plan"),
    ({"threshold": {"reference_step": 4}}, None),  # valid: 4 >= N only matters for that rule
    ({"threshold": {"rule": "reference_step", "reference_step": 4}}, "threshold.reference_step"),
    ({"model": {"source": "pretrained"}}, "model.path"),
    ({"profile": {"reward_setting": "missing"}}, "profile.reward_setting"),
    ({"threshold": {"max_steps": 9}}, "threshold.max_steps"),
    ({"evaluate": {"metrics": ["nope"]}}, "evaluate.metrics"),
    ({"train": {"learning_rate": 0}}, "train.learning_rate"),
    ({"train": {"optimizer_step": "per_entry"}}, "train.optimizer_step: moved to algorithm_params"),
    ({"algorithm_params": {"dancegrpo": {"optimizer_step": "sometimes"}}}, "algorithm_params.dancegrpo.optimizer_step"),
    ({"algorithm_params": {"flowgrpo": {"kl_divisor": "dt"}}}, "algorithm_params.flowgrpo.kl_divisor"),
    ({"algorithm_params": {"mixgrpo": {"reward_on": "image"}}}, "algorithm_params.mixgrpo.reward_on"),
    ({"model": {"tiny": {"head_dim": 6}}}, "model.tiny.head_dim"),
    ({"reward_settings": {"c": {"clip": 1.0}}}, "reward_models.clip"),
    ({"prompts": {"train": "x.txt"}}, "prompts"),
    ({"seeds": [-1]}, "seeds.0"),
    ({"algorithm_params": {"egrpo": {"granular_list": [0]}}}, "algorithm_params.egrpo.granular_list.0"),
    ({"experiment": "has space"}, "experiment"),
    ({"train": {"prompts_per_iteration": 6}, "resources": {"train": {"gpu": 4}}}, "train.prompts_per_iteration"),
    ({"model": {"family": "sdxl"}}, "model.family"),
    ({"model": {"source": "pretrain", "family": "sd3"}}, "model.family"),
    ({"sampling": {"schedule": "karras"}}, "sampling.schedule"),
    ({"train": {"ema": {"decay": 1.5}}}, "train.ema"),
    ({"train": {"prompt_sampling": "sometimes"}}, "train.prompt_sampling"),
]


@pytest.mark.parametrize("override,key", BAD)
def test_bad_configs_give_one_line_errors(tmp_path, override, key):
    cfg = micro_config(tmp_path)
    for section, value in override.items():
        if isinstance(value, dict) and isinstance(cfg.get(section), dict) and section not in ("reward_settings", "prompts"):
            cfg[section].update(value)
        else:
            cfg[section] = value
    if key is None:
        validate(cfg)
        return
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    message = str(err.value)
    assert key in message and "\n" not in message


def test_missing_required_key(tmp_path):
    cfg = micro_config(tmp_path)
    del cfg["seeds"]
    with pytest.raises(ConfigError, match="'seeds' is a required property"):
        validate(cfg)


def test_coerce_strings_from_snakemake_overrides(tmp_path):
    cfg = micro_config(tmp_path)
    cfg["seeds"] = ["0", "3"]
    cfg["sampling"]["group_size"] = "4"
    cfg["sampling"]["eta"] = "0.5"
    cfg["threshold"]["max_steps"] = "null"
    cfg["reward_settings"]["color"]["prompt_color"] = "2"
    coerce_strings(cfg)
    validate(cfg)
    assert cfg["seeds"] == [0, 3] and cfg["sampling"]["group_size"] == 4 and cfg["sampling"]["eta"] == 0.5
    assert cfg["threshold"]["max_steps"] is None and cfg["reward_settings"]["color"]["prompt_color"] == 2.0
    assert cfg["experiment"] == "micro"


def test_load_reports_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(bad)


def test_empty_mapping_on_the_command_line_is_refused():
    from egrpo.config import check_overrides

    with pytest.raises(ConfigError, match=r"--config reward_settings=\{\}: an empty mapping"):
        check_overrides({"reward_settings": {}})
    check_overrides({"seeds": [0], "sampling": {"group_size": 4}, "experiment": "x"})   # real overrides pass


def test_input_problems_name_every_missing_file(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from egrpo.config import input_problems

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert input_problems(validate(micro_config(tmp_path))) == []
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n")
    cfg = validate(micro_config(tmp_path, model={"source": "pretrained", "path": str(tmp_path / "nope")},
                                reward_settings={"h": {"hps": 1.0}},
                                reward_models={"hps": {"path": "/path/to/HPS_v2.1_compressed.pt",
                                                       "processor": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"}},
                                prompts={"eval": str(empty)}))
    problems = input_problems(cfg)
    assert problems[0] == f"model.path: {tmp_path / 'nope'} does not exist; set model.path to the FLUX pipeline directory"
    assert problems[1].startswith("reward_models.hps.path: /path/to/HPS_v2.1_compressed.pt does not exist")
    assert problems[2].startswith("reward_models.hps.processor: laion/CLIP-ViT-H-14-laion2B-s32B-b79K is neither a "
                                  "local path nor in the Hugging Face cache")
    assert problems[3].startswith(f"prompts.train: {cfg['prompts']['train']} holds the tiny world's captions, not "
                                  f"prompts for {tmp_path / 'nope'}")   # a pretrained model on the tiny world's prompts
    assert problems[4] == f"prompts.eval: {empty} holds no prompts"
    assert len(problems) == 5
    # the shipped tiny world (models/pretrain.json beside it) trains on its captions
    (tmp_path / "nope").mkdir()
    (tmp_path / "pretrain.json").write_text("{}")
    assert not any("tiny world" in p for p in input_problems(cfg))
    # a Hub id already in the cache is there
    (tmp_path / "hub/models--laion--CLIP-ViT-H-14-laion2B-s32B-b79K/snapshots/abc").mkdir(parents=True)
    assert not any(p.startswith("reward_models.hps.processor") for p in input_problems(cfg))
