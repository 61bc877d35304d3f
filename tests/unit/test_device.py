"""One device per computation: the device choice, what keeps tensors on it, and the GPU-scale options
(prompt cache, text-encoder offload, chunked decoding, torch.compile, gradient checkpointing, phase
timings). The CPU cannot see a cpu/cuda mix at run time, so the source is checked: every tensor
factory in the compute path names its device or says why it lives on the CPU."""
import ast
from pathlib import Path

import pandas as pd
import pytest
import torch

from egrpo.config import validate
from egrpo.runtime.device import select_device
from egrpo.errors import ConfigError, UserError
from egrpo.models import FlowModel, load_pipeline

ROOT = Path(__file__).resolve().parents[2]
FACTORIES = {"tensor", "zeros", "ones", "full", "empty", "arange", "randn", "rand", "randint", "randperm",
             "as_tensor", "linspace", "eye"}
COMPUTE_PATH = ["egrpo"]   # the whole package: a module added later is checked without a new line here


def unplaced_factories(path: Path) -> list[str]:
    """torch.<factory>(...) calls that neither pass device= (device="cpu" where a tensor lives on the
    CPU on purpose) nor move the result (.to( on the same statement line)."""
    source = path.read_text()
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in FACTORIES
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
                and not any(k.arg == "device" for k in node.keywords)):
            text = "\n".join(lines[node.lineno - 1:node.end_lineno])
            if ".to(" not in text:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return found


def test_every_tensor_factory_in_the_compute_path_names_its_device():
    files = [f for p in COMPUTE_PATH for f in ((ROOT / p).rglob("*.py") if (ROOT / p).is_dir() else [ROOT / p])]
    assert len(files) > 15
    problems = [line for f in files for line in unplaced_factories(f)]
    assert not problems, "tensor factories without a device (pass device=, device=\"cpu\" where it lives on the CPU):\n" + "\n".join(problems)


def test_the_factory_check_catches_a_cpu_tensor_in_a_device_expression(tmp_path):
    """The bug of the first GPU run: advantages made on the CPU, used with a mask on the GPU."""
    bad = ROOT / "tests" / "_device_probe.py"
    try:
        bad.write_text("import torch\n\ndef f(keep, n):\n    adv = torch.zeros(n)\n    return torch.where(keep, adv, 0)\n"
                       "\ndef g(x, n):\n    return torch.zeros(n, device=x.device) + torch.ones(n).to(x.device)\n"
                       "\ndef h(n):\n    return torch.arange(n, device=\"cpu\")  # indices\n"
                       "\ndef k(n):\n    return torch.arange(n)  # cpu: a comment no longer excuses it\n")
        assert [p.split(": ", 1)[0] for p in unplaced_factories(bad)] == ["tests/_device_probe.py:4",
                                                                          "tests/_device_probe.py:14"]
    finally:
        bad.unlink()


def test_select_device(micro):
    assert select_device(micro) == torch.device("cpu")  # auto on a machine without a GPU
    assert select_device({**micro, "model": {**micro["model"], "device": "cpu"}}) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="asks for a GPU"):
            select_device({**micro, "model": {**micro["model"], "device": "cuda:1"}})
    with pytest.raises(ConfigError, match="model.device"):
        validate({**micro, "model": {**micro["model"], "device": "gpu"}})


def test_prompt_encodings_are_cached_and_equal_the_pipeline(tiny_model_dir, micro):
    pipe = load_pipeline(micro, tiny_model_dir)
    cfg = {**micro, "model": {**micro["model"], "prompt_cache_size": 2, "offload_text_encoders": True}}
    model = FlowModel(pipe, cfg)
    prompts = ["a red circle on a blue background", "a green square at the top, white background"]
    embeds, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, device="cpu",
                                           max_sequence_length=model.family.max_sequence_length)
    calls = []
    pipe.text_encoder_2.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    cond = model.encode(prompts)
    torch.testing.assert_close(cond.rows["prompt_embeds"], embeds)
    torch.testing.assert_close(cond.rows["pooled"], pooled)
    again = model.encode(prompts[::-1] + prompts[:1])  # order and repeats follow the request, from the cache
    assert calls == [2]
    torch.testing.assert_close(again.rows["prompt_embeds"], embeds[[1, 0, 0]])
    model.encode(["a small yellow triangle on the left of a purple background"])  # evicts the oldest
    assert calls == [2, 1] and len(model._prompt_cache) == 2
    assert next(pipe.text_encoder_2.parameters()).device.type == "cpu"  # offloaded between encodes
    model.encode(prompts[:1])
    assert calls == [2, 1]  # prompts[0] was used last before the eviction: still cached
    model.encode(prompts[1:])
    assert calls == [2, 1, 1]  # prompts[1] was the least recently used: evicted, encoded again


def test_decoding_in_chunks_equals_one_call(tiny_model_dir, micro):
    model = FlowModel(load_pipeline(micro, tiny_model_dir), {**micro, "model": {**micro["model"], "decode_batch_size": 2}})
    x = model.initial_noise(5, torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.decode(x), model.decode(x, batch_size=64), atol=1e-6, rtol=0)


def test_compiled_transformer_serves_calls_without_gradients_only(tiny_model_dir, micro, monkeypatch):
    compiled = []
    real = torch.compile

    def eager_compile(module, **kw):  # the eager backend: the plumbing, without a C compiler's minute
        compiled.append(module)
        return real(module, backend="eager", **kw)

    monkeypatch.setattr(torch, "compile", eager_compile)
    model = FlowModel(load_pipeline(micro, tiny_model_dir), {**micro, "model": {**micro["model"], "compile": True}})
    assert compiled == [model.transformer]
    cond = model.encode(["a red circle on a blue background"])
    x = model.initial_noise(2, torch.Generator().manual_seed(0))
    used = []
    model.compiled.register_forward_pre_hook(lambda m, a: used.append("compiled"))
    with torch.no_grad():
        fast = model.velocity(x, 0.5, cond)
    assert used == ["compiled"]
    eager = model.velocity(x, 0.5, cond)  # with gradients: the eager transformer
    assert used == ["compiled"]
    torch.testing.assert_close(fast, eager.detach(), atol=1e-5, rtol=0)


def _train(micro, tiny_model_dir, tmp_path, name, **train):
    from egrpo.stages.threshold import run_threshold
    from egrpo.stages.train import run_train

    cfg = validate({**micro, "train": {**micro["train"], **train}})
    plan = tmp_path / "plan.json"
    if not plan.exists():
        run_threshold(cfg, None, plan)
    run_train(cfg, "dancegrpo", "color", 0, str(tiny_model_dir), str(plan), tmp_path / name, tmp_path / f"r-{name}")
    return tmp_path / name


def test_gradient_checkpointing_trains_the_same_policy(micro, tiny_model_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import diffusers

    enabled = []
    real = diffusers.FluxTransformer2DModel.enable_gradient_checkpointing
    monkeypatch.setattr(diffusers.FluxTransformer2DModel, "enable_gradient_checkpointing",
                        lambda self, *a, **k: (enabled.append(True), real(self, *a, **k))[1])
    plain = _train(micro, tiny_model_dir, tmp_path, "plain")
    assert enabled == []
    ckpt = _train(micro, tiny_model_dir, tmp_path, "ckpt", gradient_checkpointing=True)
    assert enabled == [True]
    a, b = (load_file(str(next(d.glob("checkpoint/*.safetensors")))) for d in (plain, ckpt))
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    log = pd.read_csv(plain / "train_log.csv")
    for phase in ("rollout_s", "scoring_s", "training_s"):
        assert (log[phase] > 0).all()
    assert (log[["rollout_s", "scoring_s", "training_s"]].sum(axis=1) <= log["iteration_s"] + 1e-6).all()
    assert "training_peak_gib" not in log  # GPU only
