"""The tiny FLUX: real diffusers classes, offline tokenizers, checkpoints (every family's sampler against
its diffusers pipeline: tests/unit/test_families.py)."""
import pytest
import torch

from egrpo import sde
from egrpo.errors import UserError
from egrpo.models import FlowModel, add_lora, family_of, load_pipeline, load_policy, save_policy


def test_tiny_pipeline_roundtrip(tiny_model_dir, micro):
    from diffusers import FluxPipeline, FluxTransformer2DModel

    assert (tiny_model_dir / "model_index.json").is_file()
    assert list(tiny_model_dir.glob("transformer/*.safetensors"))
    assert not list(tiny_model_dir.rglob("*.bin")), "weights are saved as safetensors only"
    pipe = load_pipeline(micro, tiny_model_dir)
    assert isinstance(pipe, FluxPipeline) and isinstance(pipe.transformer, FluxTransformer2DModel)
    assert not pipe.scheduler.config.use_dynamic_shifting and pipe.scheduler.config.shift == 3.0
    ids = pipe.tokenizer("a red circle").input_ids
    assert pipe.tokenizer.convert_ids_to_tokens(ids)[1:4] == ["a</w>", "red</w>", "circle</w>"]
    assert pipe.tokenizer_2.convert_ids_to_tokens(pipe.tokenizer_2("a red circle").input_ids)[:3] == ["▁a", "▁red", "▁circle"]


def test_missing_model_path_is_a_user_error(micro, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_pipeline(micro, tmp_path / "nowhere")
    with pytest.raises(UserError, match="cannot load a FluxPipeline"):
        load_pipeline(micro, tmp_path)


def test_lora_checkpoint_roundtrip(tiny_model_dir, micro, tmp_path):
    pipe = load_pipeline(micro, tiny_model_dir)
    add_lora(pipe.transformer, 4, 4, family_of(pipe).lora_targets)
    with torch.no_grad():
        for name, p in pipe.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_()
    save_policy(pipe.transformer, "lora", tmp_path / "ckpt", {"lora_rank": 4, "lora_alpha": 4})
    fresh = load_pipeline(micro, tiny_model_dir)
    load_policy(fresh.transformer, tmp_path / "ckpt", family_of(fresh).lora_targets)
    a, b = FlowModel(pipe, micro), FlowModel(fresh, micro)
    x = a.initial_noise(1, torch.Generator().manual_seed(0))
    cond = a.encode(["a red circle"])
    torch.testing.assert_close(a.velocity(x, 0.5, cond), b.velocity(x, 0.5, cond))
    base = FlowModel(load_pipeline(micro, tiny_model_dir), micro)
    assert not torch.allclose(base.velocity(x, 0.5, cond), a.velocity(x, 0.5, cond))


def test_two_builds_are_identical(tmp_path, micro):
    from egrpo.stages.build_model import run_build_model

    a, b = run_build_model(micro, tmp_path / "a"), run_build_model(micro, tmp_path / "b")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    pipe = load_pipeline(micro, a)
    unknown = pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer("a zebra").input_ids)
    assert unknown[1] == "a</w>" and "".join(unknown[2:-1]).replace("</w>", "") == "zebra"


def test_evaluation_resolution_differs_from_training(tmp_path, tiny_model_dir):
    from helpers import micro_config
    from egrpo.config import validate
    from egrpo.stages.evaluate import run_evaluate
    import json

    cfg = validate(micro_config(tmp_path, evaluate={"resolution": 32, "guidance": 2.0}))
    summary = run_evaluate(cfg, "base", tiny_model_dir, None, tmp_path / "ev")
    assert summary["resolution"] == 32 and summary["guidance"] == 2.0
    from PIL import Image
    image = Image.open(next((tmp_path / "ev/images").glob("*.png")))
    assert image.size == (32, 32)
    assert json.loads((tmp_path / "ev/summary.json").read_text())["metrics"]["prompt_color"]["mean"] >= 0


def _timestep_hooks(transformer):
    """(what the transformer's forward receives as `timestep`, what its time embedding receives)."""
    fed, embedded = [], []
    transformer.register_forward_pre_hook(lambda m, a, kw: fed.append(kw["timestep"].detach().clone()), with_kwargs=True)
    transformer.time_text_embed.register_forward_pre_hook(lambda m, a: embedded.append(a[0].detach().clone()))
    return fed, embedded


def _official_call(model, x, sigma32, cond):
    """The official FLUX trainers' call (VisualGRPO's sampler, DanceGRPO's and MixGRPO's
    train_grpo_flux.py): fp32 latents and int(1000 sigma)/1000 in fp32 under torch.autocast(bf16)."""
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        model.transformer(hidden_states=x, timestep=sigma32.expand(x.shape[0]), guidance=torch.full((x.shape[0],), 3.5),
                          pooled_projections=cond.rows["pooled"], encoder_hidden_states=cond.rows["prompt_embeds"],
                          txt_ids=cond.shared["text_ids"], img_ids=model.family.img_ids, return_dict=False)


@pytest.mark.parametrize("sharded", [False, True])
def test_the_transformer_receives_the_official_timestep_at_bf16(tiny_model_dir, tmp_path, sharded):
    """At bf16 compute (paper scale) the transformer receives int(1000 sigma)/1000 in fp32 at every
    step of N = 16, shift 3, as the official FLUX trainers feed it, unsharded and through FSDP2's
    mixed precision (which would cast forward inputs to bf16: 0.978 -> 0.9766). Inside, diffusers'
    FLUX casts the timestep to its first layer's output dtype, bf16 under autocast; the time
    embedding then sees what it sees under the official call, which this checks too."""
    import os
    import socket

    import torch.distributed as dist

    from helpers import micro_config
    from egrpo.config import validate

    cfg = validate(micro_config(tmp_path, model={"dtype": "bfloat16"}))
    model = FlowModel(load_pipeline(cfg, tiny_model_dir), cfg)
    model.round_timesteps = True
    if sharded:
        from egrpo.train import sharding

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        if sharded:
            sharding.shard(model.transformer, torch.bfloat16, master_dtype=torch.float32,
                           blocks=model.family.block_lists)
        fed, embedded = _timestep_hooks(model.transformer)   # after FSDP's own pre-forward (input casting) hook
        cond = model.encode(["a red circle on a blue background"])
        x = model.initial_noise(1, torch.Generator().manual_seed(0))
        sigmas = sde.sigma_schedule(16, 3.0)
        with torch.no_grad():
            for i in range(16):
                model.velocity(x, float(sigmas[i]), cond)
        official = [torch.tensor(int(float(s) * 1000) / 1000, dtype=torch.float32) for s in sigmas[:16]]
        assert [t.dtype for t in fed] == [torch.float32] * 16
        assert [float(t[0]) for t in fed] == [float(t) for t in official]   # 0.978, 0.409, ... exactly
        assert float(official[1]) == pytest.approx(0.978) and float(official[1].bfloat16()) != float(official[1])
        ours, embedded[:] = list(embedded), []
        for t in official:
            _official_call(model, x, t, cond)
        assert [float(a[0]) for a in ours] == [float(b[0]) for b in embedded]
    finally:
        if sharded:
            dist.destroy_process_group()


def test_one_state_one_timestep_whichever_path_feeds_it(tiny_model_dir, micro):
    """The anchor (one sigma for the batch) and the batched ODE lanes (one sigma per sample) feed the
    transformer the same timestep for the same step: at N = 16, steps 4 and 9 (sigma 0.9 and 0.7)
    once became 0.899 and 0.699 in the lanes' float32 sigmas under int(1000 sigma)/1000."""
    from egrpo.rollout import ode_lanes, ode_run

    model = FlowModel(load_pipeline(micro, tiny_model_dir), micro)
    model.round_timesteps = True
    fed, _ = _timestep_hooks(model.transformer)
    cond = model.encode(["a red circle on a blue background"])
    x = model.initial_noise(1, torch.Generator().manual_seed(0))
    sigmas = sde.sigma_schedule(16, 3.0)
    ode_run(model.velocity, x, cond, sigmas, list(range(17)))
    anchor, fed[:] = [float(t[0]) for t in fed], []
    ode_lanes(model.velocity, [(x, [i, 16]) for i in range(16)], cond, sigmas)   # every step at tick 0, one call
    lanes = [float(t) for t in fed[0]]
    assert lanes == anchor and anchor[4] == pytest.approx(0.9) and anchor[9] == pytest.approx(0.7)
