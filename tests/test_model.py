"""The tiny FLUX: real diffusers classes, offline tokenizers, and our sampler == FluxPipeline."""
import numpy as np
import pytest
import torch

from egrpo import sde
from egrpo.errors import UserError
from egrpo.model import FlowModel, load_pipeline, load_policy, save_policy, add_lora
from egrpo.rollout import ode_run


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


def test_our_ode_sampler_matches_flux_pipeline(tiny_model_dir, micro):
    pipe = load_pipeline(micro, tiny_model_dir)
    model = FlowModel(pipe, micro)
    n = micro["sampling"]["num_steps"]
    x0 = model.initial_noise(2, torch.Generator().manual_seed(0))
    cond = model.encode(["a red circle on a blue background"])
    ours = model.decode(ode_run(model.velocity, x0, cond.expand(2), sde.sigma_schedule(n, 3.0), list(range(n + 1))))
    assert model.nfe == 2 * n
    res = micro["sampling"]["resolution"]
    theirs = pipe(["a red circle on a blue background"] * 2, height=res, width=res, num_inference_steps=n,
                  sigmas=list(np.linspace(1, 1 / n, n)), guidance_scale=micro["sampling"]["guidance"],
                  latents=x0, max_sequence_length=model.max_sequence_length, output_type="pt").images
    assert ours.shape == (2, 3, res, res)
    torch.testing.assert_close(ours, theirs.float(), atol=1e-5, rtol=0)


def test_missing_model_path_is_a_user_error(micro, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_pipeline(micro, tmp_path / "nowhere")
    with pytest.raises(UserError, match="cannot load a FluxPipeline"):
        load_pipeline(micro, tmp_path)


def test_lora_checkpoint_roundtrip(tiny_model_dir, micro, tmp_path):
    pipe = load_pipeline(micro, tiny_model_dir)
    add_lora(pipe.transformer, 4, 4)
    with torch.no_grad():
        for name, p in pipe.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_()
    save_policy(pipe.transformer, "lora", tmp_path / "ckpt", {"lora_rank": 4, "lora_alpha": 4})
    fresh = load_pipeline(micro, tiny_model_dir)
    load_policy(fresh.transformer, tmp_path / "ckpt")
    a, b = FlowModel(pipe, micro), FlowModel(fresh, micro)
    x = a.initial_noise(1, torch.Generator().manual_seed(0))
    cond = a.encode(["a red circle"])
    torch.testing.assert_close(a.velocity(x, 0.5, cond), b.velocity(x, 0.5, cond))
    base = FlowModel(load_pipeline(micro, tiny_model_dir), micro)
    assert not torch.allclose(base.velocity(x, 0.5, cond), a.velocity(x, 0.5, cond))


def test_two_builds_are_identical(tmp_path, micro):
    from egrpo.model import run_build_model

    a, b = run_build_model(micro, tmp_path / "a"), run_build_model(micro, tmp_path / "b")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    pipe = load_pipeline(micro, a)
    unknown = pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer("a zebra").input_ids)
    assert unknown[1] == "a</w>" and "".join(unknown[2:-1]).replace("</w>", "") == "zebra"


def test_evaluation_resolution_differs_from_training(tmp_path, tiny_model_dir):
    from conftest import micro_config
    from egrpo.config import validate
    from egrpo.evaluate import run_evaluate
    import json

    cfg = validate(micro_config(tmp_path, evaluate={"resolution": 32, "guidance": 2.0}))
    summary = run_evaluate(cfg, "base", tiny_model_dir, None, tmp_path / "ev")
    assert summary["resolution"] == 32 and summary["guidance"] == 2.0
    from PIL import Image
    image = Image.open(next((tmp_path / "ev/images").glob("*.png")))
    assert image.size == (32, 32)
    assert json.loads((tmp_path / "ev/summary.json").read_text())["metrics"]["prompt_color"]["mean"] >= 0
