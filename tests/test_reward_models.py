"""Model-based rewards load through their real loaders from tiny random-weight local copies."""
import pytest
import torch

from egrpo.errors import UserError
from egrpo.rewards import build_reward


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from egrpo.model import build_tokenizers

    path = tmp_path_factory.mktemp("clip")
    tokenizer, _ = build_tokenizers(["a red circle on a blue background"], 16)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(path)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    processor.save_pretrained(path)
    assert list(path.glob("*.safetensors"))
    return path


@pytest.mark.parametrize("name", ["clip", "pickscore"])
def test_clip_family_rewards_score_a_batch(tiny_clip_dir, name):
    reward = build_reward(name, {"reward_models": {name: {"path": str(tiny_clip_dir)}}})
    images = torch.rand(3, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    scores = reward(images, ["a red circle", "a blue circle on a red background", "a red circle"])
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    if name == "clip":
        assert (scores.abs() <= 1 + 1e-5).all()
    again = reward(images[:1], ["a red circle"])
    torch.testing.assert_close(again, scores[:1], atol=1e-5, rtol=0)


def test_missing_reward_weights_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="reward_models.clip.path"):
        build_reward("clip", {"reward_models": {}})
    with pytest.raises(UserError, match="cannot load a CLIP model"):
        build_reward("pickscore", {"reward_models": {"pickscore": {"path": str(tmp_path)}}})


def openclip_layout(width_v=16, layers_v=2, patch=8, image=32, width_t=16, layers_t=2, context=16, vocab=64,
                    embed=8, mlp_ratio=4):
    """Names and shapes of an OpenCLIP ViT checkpoint, written out from OpenCLIP's layout."""
    shapes = {"token_embedding.weight": (vocab, width_t), "positional_embedding": (context, width_t),
              "ln_final.weight": (width_t,), "ln_final.bias": (width_t,), "text_projection": (width_t, embed),
              "logit_scale": (), "visual.class_embedding": (width_v,),
              "visual.positional_embedding": ((image // patch) ** 2 + 1, width_v),
              "visual.conv1.weight": (width_v, 3, patch, patch), "visual.ln_pre.weight": (width_v,),
              "visual.ln_pre.bias": (width_v,), "visual.ln_post.weight": (width_v,), "visual.ln_post.bias": (width_v,),
              "visual.proj": (width_v, embed)}
    for prefix, width, layers in (("", width_t, layers_t), ("visual.", width_v, layers_v)):
        for i in range(layers):
            b = f"{prefix}transformer.resblocks.{i}."
            shapes.update({b + "ln_1.weight": (width,), b + "ln_1.bias": (width,),
                           b + "attn.in_proj_weight": (3 * width, width), b + "attn.in_proj_bias": (3 * width,),
                           b + "attn.out_proj.weight": (width, width), b + "attn.out_proj.bias": (width,),
                           b + "ln_2.weight": (width,), b + "ln_2.bias": (width,),
                           b + "mlp.c_fc.weight": (mlp_ratio * width, width), b + "mlp.c_fc.bias": (mlp_ratio * width,),
                           b + "mlp.c_proj.weight": (width, mlp_ratio * width), b + "mlp.c_proj.bias": (width,)})
    return shapes


@pytest.fixture(scope="module")
def tiny_hps(tmp_path_factory, tiny_clip_dir):
    """A tiny random-weight checkpoint in the ORIGINAL OpenCLIP/HPS layout ({'state_dict': ...}, .pt)."""
    path = tmp_path_factory.mktemp("hps") / "HPS_tiny.pt"
    g = torch.Generator().manual_seed(0)
    vocab = len(__import__("transformers").CLIPTokenizer.from_pretrained(tiny_clip_dir))
    state = {k: torch.randn(s, generator=g) * 0.1 for k, s in openclip_layout(vocab=vocab).items()}
    state["logit_scale"] = torch.tensor(4.6)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    return path, state


def test_hps_loads_original_layout_and_scores(tiny_hps, tiny_clip_dir):
    path, state = tiny_hps
    cfg = {"reward_models": {"hps": {"path": str(path), "processor": str(tiny_clip_dir),
                                     "arch": {"vision_heads": 2, "text_heads": 2}}}}
    reward = build_reward("hps", cfg)
    model = reward.model
    # every original tensor landed where it belongs
    q, k, v = state["transformer.resblocks.1.attn.in_proj_weight"].chunk(3)
    torch.testing.assert_close(model.text_model.encoder.layers[1].self_attn.k_proj.weight, k)
    torch.testing.assert_close(model.visual_projection.weight, state["visual.proj"].t())
    torch.testing.assert_close(model.vision_model.embeddings.patch_embedding.weight, state["visual.conv1.weight"])
    images = torch.rand(3, 3, 40, 56, generator=torch.Generator().manual_seed(1))
    scores = reward(images, ["a red circle", "a blue star", "a red circle"])
    assert scores.shape == (3,) and torch.isfinite(scores).all() and (scores.abs() <= 1 + 1e-5).all()


def test_openclip_loading_is_strict(tiny_hps, tmp_path):
    from egrpo.rewards.openclip import load_openclip_as_clipmodel

    _, state = tiny_hps
    heads = {"vision_heads": 2, "text_heads": 2}
    extra = dict(state, **{"visual.something_new": torch.zeros(2)})
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(UserError, match="keys the mapping does not know"):
        load_openclip_as_clipmodel(tmp_path / "extra.pt", heads)
    missing = {k: v for k, v in state.items() if k != "ln_final.bias"}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(UserError, match="missing"):
        load_openclip_as_clipmodel(tmp_path / "missing.pt", heads)


def test_vit_h_14_layout_matches_clipmodel_on_meta_device():
    """Full size, no weights: ViT-H-14's OpenCLIP keys map onto CLIPModel's parameters with equal shapes."""
    from transformers import CLIPModel

    from egrpo.rewards.openclip import config_from_state, openclip_to_hf

    layout = openclip_layout(width_v=1280, layers_v=32, patch=14, image=224, width_t=1024, layers_t=24, context=77,
                             vocab=49408, embed=1024)
    with torch.device("meta"):
        state = {k: torch.empty(s) for k, s in layout.items()}
        config = config_from_state(state, "ViT-H-14")
        model = CLIPModel(config)
    assert (config.vision_config.num_attention_heads, config.vision_config.intermediate_size) == (16, 5120)
    mapped = openclip_to_hf(state)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    assert {k: tuple(v.shape) for k, v in mapped.items()} == expected
    assert sum(v.numel() for v in state.values()) == sum(p.numel() for p in model.parameters())


def test_clip_score_from_an_openclip_file_equals_hps_path(tiny_hps, tiny_clip_dir):
    path, _ = tiny_hps
    settings = {"path": str(path), "processor": str(tiny_clip_dir), "arch": {"vision_heads": 2, "text_heads": 2}}
    clip = build_reward("clip", {"reward_models": {"clip": settings}})
    hps = build_reward("hps", {"reward_models": {"hps": settings}})
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(clip(images, ["a red circle"] * 2), hps(images, ["a red circle"] * 2))
