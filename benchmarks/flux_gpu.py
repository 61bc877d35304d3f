"""FLUX.1-dev-scale transformer on a CUDA GPU: throughput, memory, MFU (skips without a GPU).

    python benchmarks/flux_gpu.py [--resolution 720 512] [--group-size 12] [--compile] [--lora]
    python benchmarks/flux_gpu.py --tiny --device cpu      # smoke check of the code path anywhere

A FluxTransformer2DModel with FLUX.1-dev's configuration (egrpo/models/presets.py,
random bf16 weights, nothing downloaded): forward, and forward+backward of a group of G samples
(LoRA on the attention projections + gradient checkpointing with --lora, as training does).
FLOPs per forward = 2 x (each weight x the tokens it is applied to) + attention 4 x seq^2 x width
per block (QK^T and AV): in the double blocks the image-stream weights see the image tokens and
the text-stream weights (add_*_proj, to_add_out, ff_context, norm1_context) the text tokens; the
single blocks see both; the AdaLN modulation linears, time/text embedders and norm_out act once
per sample (3.28 B of the 11.90 B parameters). Backward = 2 x forward; recomputation by
checkpointing is not counted as work.
MFU = useful FLOP/s / the GPU's dense bf16 peak (--peak-tflops, or a table of known GPUs).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
TINY = {"attention_head_dim": 16, "axes_dims_rope": [4, 6, 6], "guidance_embeds": True, "in_channels": 64,
        "joint_attention_dim": 64, "num_attention_heads": 2, "num_layers": 1, "num_single_layers": 2,
        "patch_size": 1, "pooled_projection_dim": 32}


def flops_per_forward(model, image_tokens: int, text_tokens: int) -> float:
    """Useful FLOPs of one sample's forward (see the module docstring)."""
    cfg = model.config
    width = cfg.num_attention_heads * cfg.attention_head_dim
    seq = image_tokens + text_tokens
    flops = 0.0
    for name, p in model.named_parameters():
        if p.ndim < 2:  # biases and norm scales: negligible
            continue
        if (".norm" in name and ".linear." in name) or name.startswith(("time_text_embed", "norm_out")):
            tokens = 1                                       # per sample (AdaLN modulation)
        elif name.startswith("transformer_blocks."):
            text = any(k in name for k in ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "ff_context"))
            tokens = text_tokens if text else image_tokens
        elif name.startswith("single_transformer_blocks."):
            tokens = seq
        elif name.startswith("context_embedder"):
            tokens = text_tokens
        else:                                                # x_embedder, proj_out
            tokens = image_tokens
        flops += 2.0 * p.numel() * tokens
    return flops + 4.0 * seq**2 * width * (cfg.num_layers + cfg.num_single_layers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, nargs="+", default=[720, 512])
    parser.add_argument("--group-size", type=int, default=12)
    parser.add_argument("--text-tokens", type=int, default=512)
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    parser.add_argument("--lora", action="store_true", help="train LoRA adapters with gradient checkpointing")
    parser.add_argument("--attention", choices=["default", "flash", "efficient", "cudnn", "math"], default="flash",
                        help="SDPA backend (flash: flash + memory-efficient kernels; cuDNN's backward failed "
                             "with 'mha_graph.execute' on torch 2.11 + H100 here)")
    parser.add_argument("--no-checkpointing", action="store_true", help="with --lora: keep every activation")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the GPU (default: from its name)")
    parser.add_argument("--tiny", action="store_true", help="a tiny config (smoke check of the code path)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("flux-gpu: no CUDA GPU here; skipped (run it on a GPU machine, or --tiny --device cpu to smoke-check)")
        print("RESULT flux_gpu_mfu skipped")
        return

    from diffusers import FluxTransformer2DModel

    from egrpo.models.presets import FLUX_DEV_TRANSFORMER

    config = TINY if args.tiny else FLUX_DEV_TRANSFORMER
    device = torch.device(args.device)
    dtype = torch.bfloat16
    torch.manual_seed(0)
    with torch.device(device):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        model = FluxTransformer2DModel(**config)
        torch.set_default_dtype(previous)
    params = sum(p.numel() for p in model.parameters())
    if args.lora:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from egrpo.models import add_lora
        from egrpo.models.flux import Flux
        model.requires_grad_(False)
        add_lora(model, 64, 64, Flux.lora_targets)
        if not args.no_checkpointing:
            model.enable_gradient_checkpointing()
    else:
        model.requires_grad_(True)
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu), None)
    print(f"device {gpu}; transformer {params / 1e9:.2f} B parameters; G = {args.group_size}; "
          f"{('LoRA' + ('' if args.no_checkpointing else ' + checkpointing')) if args.lora else 'full backward'}")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    if args.attention != "default" and device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel
        backends = {"flash": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
                    "efficient": [SDPBackend.EFFICIENT_ATTENTION], "cudnn": [SDPBackend.CUDNN_ATTENTION],
                    "math": [SDPBackend.MATH]}[args.attention]
        sdpa_kernel(backends).__enter__()  # for the rest of the process
        # the context above is thread-local; the global switch also reaches autograd's threads
        torch.backends.cuda.enable_cudnn_sdp(args.attention == "cudnn")
    print(f"attention backend: {args.attention}")

    best_mfu = 0.0
    for resolution in args.resolution:
        side = resolution // 16  # VAE /8, then 2x2 packing
        image_tokens, g = side * side, args.group_size
        inputs = dict(hidden_states=torch.randn(g, image_tokens, config["in_channels"], device=device, dtype=dtype),
                      encoder_hidden_states=torch.randn(g, args.text_tokens, config["joint_attention_dim"], device=device, dtype=dtype),
                      pooled_projections=torch.randn(g, config["pooled_projection_dim"], device=device, dtype=dtype),
                      timestep=torch.full((g,), 0.5, device=device, dtype=dtype),
                      guidance=torch.full((g,), 3.5, device=device, dtype=dtype),
                      txt_ids=torch.zeros(args.text_tokens, 3, device=device, dtype=dtype),
                      img_ids=torch.zeros(image_tokens, 3, device=device, dtype=dtype), return_dict=False)
        fwd_flops = g * flops_per_forward(model, image_tokens, args.text_tokens)
        for compiled in ([False, True] if args.compile else [False]):
            net = torch.compile(model) if compiled else model
            for mode in ("forward", "forward+backward"):
                def step():
                    if mode == "forward":
                        with torch.no_grad():
                            net(**inputs)
                    else:
                        net(**inputs)[0].float().square().mean().backward()
                step()  # warm-up (and compilation)
                sync()
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    step()
                    sync()
                    times.append(time.perf_counter() - start)
                t = min(times)
                flops = fwd_flops * (1 if mode == "forward" else 3)
                mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
                mfu = flops / t / (peak * 1e12) if peak else float("nan")
                best_mfu = max(best_mfu, mfu if mfu == mfu else 0.0)
                print(f"{resolution} px ({image_tokens} + {args.text_tokens} tokens) {'compiled' if compiled else 'eager'} "
                      f"{mode:17s} {t * 1e3:9.1f} ms  {g * image_tokens / t:10.0f} img tokens/s  "
                      f"{flops / t / 1e12:8.1f} TFLOP/s  MFU {mfu:.3f}  peak mem {mem:.1f} GiB")
    print(f"RESULT flux_gpu_mfu {best_mfu:.3f}" if peak else "RESULT flux_gpu_mfu unknown-peak")


if __name__ == "__main__":
    main()
