"""Every registered model family through one code path (egrpo/models/): egrpo's sampler equals the
family's own diffusers pipeline, every algorithm trains on it with LoRA and full fine-tuning, true
CFG is counted as two evaluations, a crashed run resumes into the unbroken one, and the micro DAG
runs end to end. The tests iterate over `egrpo.models.FAMILIES`: a family added there gets every
check here without new test code."""
import json

import pytest
import torch
from helpers import micro_config, shared_once

from egrpo.config import validate
from egrpo.errors import UserError
from egrpo.models import FAMILIES, FlowModel, load_pipeline
from egrpo.stages.build_model import run_build_model
from egrpo.rollout import ode_run

ALGORITHMS = ["egrpo", "dancegrpo", "mixgrpo", "flowgrpo"]
PROMPTS = ["a red circle on a blue background", "a small green square at the top of a white background"]


def family_config(tmp_path, family, **overrides):
    """The micro config on `family`'s tiny model: its pipeline's own schedule, guidance 3.5 (FLUX's
    embedding; true CFG with w = 3.5 elsewhere) and a non-empty negative prompt."""
    sampling = {"schedule": "pipeline", "guidance": 3.5, "negative_prompt": "a blurry image",
                **overrides.pop("sampling", {})}
    return validate(micro_config(tmp_path, model={"family": family}, sampling=sampling, **overrides))


@pytest.fixture(scope="session", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    """(name, directory of its tiny model), built once per run."""
    name = request.param
    path = shared_once(tmp_path_factory, f"tiny-{name}",
                       lambda p: run_build_model(family_config(p.parent, name), p))
    return name, path


def test_sampler_equals_the_diffusers_pipeline(family, tmp_path):
    """Our ODE sampler (eta 0) and the family's pipeline (StableDiffusion3Pipeline, QwenImagePipeline,
    FluxPipeline): same noise, prompts, steps, guidance, the pipeline's own schedule -> the same
    image (relative difference <= 1e-5 in fp32). This proves conditioning, negative prompt, packing,
    timestep convention, guidance and VAE handling together."""
    name, model_dir = family
    cfg = family_config(tmp_path, name)
    model = FlowModel(load_pipeline(cfg, model_dir), cfg)
    n = cfg["sampling"]["num_steps"]
    x0 = model.initial_noise(len(PROMPTS), torch.Generator().manual_seed(0))
    ours = model.decode(ode_run(model.velocity, x0, model.encode(PROMPTS), model.sigmas(n), list(range(n + 1))))
    theirs = model.family.pipeline_images(PROMPTS, x0.clone(), n).float()
    assert ours.shape == theirs.shape == (len(PROMPTS), 3, model.resolution, model.resolution)
    assert float((ours - theirs).abs().max()) <= 1e-5 * float(theirs.abs().max())
    assert float(ours.std()) > 0
    # transformer evaluations: true CFG evaluates the prompt and the negative prompt at every step
    assert model.nfe == len(PROMPTS) * n * model.evaluations_per_call
    assert model.evaluations_per_call == (1 if name == "flux" else 2)


def test_a_batch_gives_what_each_prompt_gives_alone(family, tmp_path):
    """Prompts are encoded once and cached; a batch of prompts of different lengths (padded and
    masked where the family's text has variable length) gives each sample its own velocity."""
    name, model_dir = family
    cfg = family_config(tmp_path, name)
    model = FlowModel(load_pipeline(cfg, model_dir), cfg)
    x = model.initial_noise(2, torch.Generator().manual_seed(1))
    together = model.velocity(x, 0.7, model.encode(PROMPTS))
    alone = torch.cat([model.velocity(x[i:i + 1], 0.7, model.encode([p])) for i, p in enumerate(PROMPTS)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    reversed_batch = model.velocity(x.flip(0), 0.7, model.encode(PROMPTS[::-1]))   # from the cache
    torch.testing.assert_close(reversed_batch.flip(0), together, atol=1e-5, rtol=1e-5)




def test_the_schedule_left_unset_is_the_familys_own(family, tmp_path):
    """sampling.schedule null: FLUX samples the official GRPO recipes' static closed form, SD3.5 and
    Qwen-Image what their own pipelines sample (a recipe that wants another sets it)."""
    from egrpo import sde

    name, model_dir = family
    cfg = family_config(tmp_path, name, sampling={"schedule": None})
    model = FlowModel(load_pipeline(cfg, model_dir), cfg)
    n = cfg["sampling"]["num_steps"]
    if name == "flux":
        assert model.schedule == "static"
        torch.testing.assert_close(model.sigmas(n), sde.sigma_schedule(n, cfg["sampling"]["shift"]).double())
    else:
        assert model.schedule == "pipeline"
        torch.testing.assert_close(model.sigmas(n), model.family.pipeline_sigmas(n).double())
        assert float((model.sigmas(n) - sde.sigma_schedule(n, cfg["sampling"]["shift"]).double()).abs().max()) > 1e-4

def test_the_unconditional_half_can_be_detached_in_training(family, tmp_path):
    """train.cfg_uncond_gradient: true-CFG families backpropagate through the negative prompt's half
    (flow_grpo upstream) or not (false: flow_grpo ac4c86e's detach); the velocity itself is the same."""
    name, model_dir = family
    if name == "flux":
        pytest.skip("FLUX's guidance is a distilled embedding: no unconditional half")
    grads, velocities = [], []
    for keep in (True, False):
        cfg = family_config(tmp_path, name, train={"cfg_uncond_gradient": keep})
        model = FlowModel(load_pipeline(cfg, model_dir), cfg)
        cond = model.encode(PROMPTS[:1])
        neg = next(k for k in cond.rows if k.startswith("negative") and "mask" not in k and cond.rows[k].is_floating_point())
        cond.rows[neg] = cond.rows[neg].clone().requires_grad_(True)
        v = model.velocity(model.initial_noise(1, torch.Generator().manual_seed(2)), 0.6, cond)
        v.sum().backward()
        grads.append(cond.rows[neg].grad)
        velocities.append(v.detach())
    assert grads[0] is not None and float(grads[0].abs().sum()) > 0
    assert grads[1] is None or float(grads[1].abs().sum()) == 0
    torch.testing.assert_close(velocities[0], velocities[1])


def test_lora_init_gaussian_is_normal_with_std_one_over_rank():
    """train.lora_init: gaussian draws A from N(0, 1/r) (Flow-GRPO's and DiffusionNFT's recipes); kaiming is
    peft's default, uniform with std 1/sqrt(3 fan_in); B starts at 0 either way (the policy starts at the base)."""
    from diffusers.loaders.peft import PeftAdapterMixin

    from egrpo.models import add_lora

    fan_in, rank, stds = 1024, 8, {}
    for init in ("kaiming", "gaussian"):
        torch.manual_seed(0)
        host = type("Host", (torch.nn.Module, PeftAdapterMixin), {})()   # what add_lora calls add_adapter on
        host.to_q, host.to_k = torch.nn.Linear(fan_in, 64), torch.nn.Linear(fan_in, 64)
        add_lora(host, rank, rank, ("to_q", "to_k"), init)
        a = torch.cat([m.weight.detach().flatten() for n, m in host.named_modules() if n.endswith("lora_A.default")])
        b = torch.cat([m.weight.detach().flatten() for n, m in host.named_modules() if n.endswith("lora_B.default")])
        stds[init] = float(a.std())
        assert float(b.abs().max()) == 0
    assert stds["gaussian"] == pytest.approx(1 / rank, rel=0.1)
    assert stds["kaiming"] == pytest.approx(1 / (3 * fan_in) ** 0.5, rel=0.1)

def test_family_comes_from_the_pipeline_and_a_mismatch_is_one_line(family, tmp_path):
    name, model_dir = family
    cfg = family_config(tmp_path, name)
    cfg["model"]["family"] = None
    assert FlowModel(load_pipeline(cfg, model_dir), cfg).family.name == name
    other = next(f for f in sorted(FAMILIES) if f != name)
    cfg["model"]["family"] = other
    with pytest.raises(UserError, match=rf"model.family: the config says '{other}' but .* \('{name}'\)"):
        load_pipeline(cfg, model_dir)


def _plan(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"plan": [{"start": 0, "length": 1}, {"start": 1, "length": 2}]}))
    return str(path)


@pytest.mark.parametrize("finetune", ["lora", "full"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_trains_on_every_family(family, algorithm, finetune, tmp_path):
    """One iteration through the real Trainer. Every transformer evaluation is counted: the model
    calls' closed form times the evaluations per call (2 under true CFG) equals what the hooked
    transformer saw, in the rollout and in training; the trained weights move."""
    from egrpo.train.trainer import Trainer

    name, model_dir = family
    cfg = family_config(tmp_path, name, train={"iterations": 1, "prompts_per_iteration": 1, "finetune": finetune,
                                               "learning_rate": 1e-2, "checkpoint_every": 1})
    trainer = Trainer(cfg, algorithm, "color", 0, str(model_dir), _plan(tmp_path) if algorithm == "egrpo" else None,
                      tmp_path / "out", tmp_path / "resume")
    seen = []
    for net in filter(None, (trainer.model.transformer, trainer.model.reference)):
        net.register_forward_pre_hook(lambda m, args, kw: seen.append(kw["hidden_states"].shape[0]), with_kwargs=True)
    before = [p.detach().clone() for p in trainer.trainable.params]
    row = trainer.iteration(0)
    assert row["nfe_rollout"] == row["nfe_rollout_expected"] > 0
    assert row["nfe_train"] == row["nfe_train_expected"] > 0
    assert sum(seen) == row["nfe_rollout"] + row["nfe_train"] + row["nfe_reference"]
    if trainer.model.evaluations_per_call == 2:
        assert row["nfe_rollout"] % 2 == 0 and row["nfe_train"] % 2 == 0
    assert row["optimizer_steps"] >= 1 and row["loss"] == row["loss"]
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, trainer.trainable.params))


def test_a_crashed_run_resumes_into_the_unbroken_one(family, tmp_path, monkeypatch):
    """A run that dies after iteration 1 (after its checkpoint) and is started again ends with the
    unbroken run's metrics, log and weights."""
    import pandas as pd
    from safetensors.torch import load_file

    from egrpo.runtime.faults import FaultPlan
    from egrpo.stages.train import run_train

    name, model_dir = family
    cfg = family_config(tmp_path, name, train={"iterations": 2, "prompts_per_iteration": 1, "checkpoint_every": 1,
                                               "learning_rate": 1e-2})
    unbroken = run_train(cfg, "egrpo", "color", 0, str(model_dir), _plan(tmp_path), tmp_path / "u", tmp_path / "ru")

    def crash(plan, done, resumed):   # a fault after iteration 1 of a fresh run
        if done == 1 and not resumed:
            raise RuntimeError("injected crash after iteration 1")

    monkeypatch.setattr(FaultPlan, "after_iteration", crash)
    with pytest.raises(RuntimeError, match="injected crash"):
        run_train(cfg, "egrpo", "color", 0, str(model_dir), _plan(tmp_path), tmp_path / "k", tmp_path / "rk")
    assert (tmp_path / "rk/state/state.json").is_file() and not (tmp_path / "k/metrics.json").exists()
    resumed = run_train(cfg, "egrpo", "color", 0, str(model_dir), _plan(tmp_path), tmp_path / "k", tmp_path / "rk")
    assert resumed["resumed_from_iteration"] == 1
    volatile = {"wall_s", "mlflow_run_id", "resumed_from_iteration"}
    assert {k: v for k, v in unbroken.items() if k not in volatile} == \
        {k: v for k, v in resumed.items() if k not in volatile}
    timings = [c for c in pd.read_csv(tmp_path / "u/train_log.csv").columns if c.endswith("_s")]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "u/train_log.csv").drop(columns=timings),
                                  pd.read_csv(tmp_path / "k/train_log.csv").drop(columns=timings))
    a, b = (load_file(str(tmp_path / d / "checkpoint/lora.safetensors")) for d in ("u", "k"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_qwen_chat_template_is_the_pipelines(tmp_path):
    """The tiny Qwen tokenizer makes the pipeline's system prompt as many tokens as the pipeline
    drops (34, as Qwen2.5-VL's tokenizer does), so the tiny model sees only the prompt's tokens."""
    from diffusers import QwenImagePipeline

    from egrpo.models.qwenimage import PROMPT_TEMPLATE, PROMPT_TEMPLATE_START, QwenImage

    cfg = validate(micro_config(tmp_path, model={"family": "qwenimage"}))
    pipe = QwenImage.build_tiny(cfg, PROMPTS)
    assert isinstance(pipe, QwenImagePipeline)
    assert pipe.prompt_template_encode == PROMPT_TEMPLATE
    assert pipe.prompt_template_encode_start_idx == PROMPT_TEMPLATE_START
    prefix = PROMPT_TEMPLATE.split("{}")[0]
    assert len(pipe.tokenizer(prefix).input_ids) == PROMPT_TEMPLATE_START
