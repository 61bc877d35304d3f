"""Model-based rewards load through their real loaders from tiny random-weight local copies."""
import json
import pytest
import torch

from egrpo.errors import UserError
from egrpo.rewards import build_reward


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from egrpo.models.tokenizers import build_tokenizers

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


def imagereward_layout(width_v=16, layers_v=2, patch=8, image=32, width_t=16, layers_t=2, vocab=40, positions=40,
                       mlp=(1024, 128, 64, 16)):
    """Names and shapes of the original ImageReward.pt (BLIP ViT + BERT with cross-attention + MLP head)."""
    shapes = {"blip.visual_encoder.cls_token": (1, 1, width_v),
              "blip.visual_encoder.pos_embed": (1, (image // patch) ** 2 + 1, width_v),
              "blip.visual_encoder.patch_embed.proj.weight": (width_v, 3, patch, patch),
              "blip.visual_encoder.patch_embed.proj.bias": (width_v,),
              "blip.visual_encoder.norm.weight": (width_v,), "blip.visual_encoder.norm.bias": (width_v,),
              "blip.vision_proj.weight": (256, width_v), "blip.vision_proj.bias": (256,),
              "blip.text_proj.weight": (256, width_t), "blip.text_proj.bias": (256,),
              "blip.text_encoder.embeddings.position_ids": (1, positions),
              "blip.text_encoder.embeddings.word_embeddings.weight": (vocab, width_t),
              "blip.text_encoder.embeddings.position_embeddings.weight": (positions, width_t),
              "blip.text_encoder.embeddings.LayerNorm.weight": (width_t,),
              "blip.text_encoder.embeddings.LayerNorm.bias": (width_t,)}
    for i in range(layers_v):
        b = f"blip.visual_encoder.blocks.{i}."
        shapes.update({b + "norm1.weight": (width_v,), b + "norm1.bias": (width_v,),
                       b + "attn.qkv.weight": (3 * width_v, width_v), b + "attn.qkv.bias": (3 * width_v,),
                       b + "attn.proj.weight": (width_v, width_v), b + "attn.proj.bias": (width_v,),
                       b + "norm2.weight": (width_v,), b + "norm2.bias": (width_v,),
                       b + "mlp.fc1.weight": (4 * width_v, width_v), b + "mlp.fc1.bias": (4 * width_v,),
                       b + "mlp.fc2.weight": (width_v, 4 * width_v), b + "mlp.fc2.bias": (width_v,)})
    for i in range(layers_t):
        b = f"blip.text_encoder.encoder.layer.{i}."
        for attn, kv_width in (("attention", width_t), ("crossattention", width_v)):
            shapes.update({b + f"{attn}.self.query.weight": (width_t, width_t), b + f"{attn}.self.query.bias": (width_t,),
                           b + f"{attn}.self.key.weight": (width_t, kv_width), b + f"{attn}.self.key.bias": (width_t,),
                           b + f"{attn}.self.value.weight": (width_t, kv_width), b + f"{attn}.self.value.bias": (width_t,),
                           b + f"{attn}.output.dense.weight": (width_t, width_t), b + f"{attn}.output.dense.bias": (width_t,),
                           b + f"{attn}.output.LayerNorm.weight": (width_t,), b + f"{attn}.output.LayerNorm.bias": (width_t,)})
        shapes.update({b + "intermediate.dense.weight": (4 * width_t, width_t), b + "intermediate.dense.bias": (4 * width_t,),
                       b + "output.dense.weight": (width_t, 4 * width_t), b + "output.dense.bias": (width_t,),
                       b + "output.LayerNorm.weight": (width_t,), b + "output.LayerNorm.bias": (width_t,)})
    sizes = (width_t, *mlp, 1)
    for index, (a, b) in zip((0, 2, 4, 6, 7), zip(sizes, sizes[1:])):
        shapes.update({f"mlp.layers.{index}.weight": (b, a), f"mlp.layers.{index}.bias": (b,)})
    return shapes


@pytest.fixture(scope="module")
def tiny_imagereward(tmp_path_factory):
    from transformers import BertTokenizer

    root = tmp_path_factory.mktemp("imagereward")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "circle", "star", "on", "background"]
    (root / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(root / "vocab.txt"))
    tokenizer.save_pretrained(root / "tokenizer")
    g = torch.Generator().manual_seed(0)
    layout = imagereward_layout(vocab=len(words) + 2)
    state = {k: (torch.arange(s[1]).unsqueeze(0) if k.endswith("position_ids") else torch.randn(s, generator=g) * 0.2)
             for k, s in layout.items()}
    torch.save(state, root / "ImageReward.pt")
    return root, state


def test_imagereward_loads_original_layout_and_scores(tiny_imagereward):
    root, state = tiny_imagereward
    cfg = {"reward_models": {"imagereward": {"path": str(root / "ImageReward.pt"), "processor": str(root / "tokenizer"),
                                             "arch": {"vision_heads": 2, "text_heads": 2}}}}
    reward = build_reward("imagereward", cfg)
    torch.testing.assert_close(reward.vision.encoder.layers[1].self_attn.qkv.weight,
                               state["blip.visual_encoder.blocks.1.attn.qkv.weight"])
    torch.testing.assert_close(reward.text.encoder.layer[0].crossattention.self.key.weight,
                               state["blip.text_encoder.encoder.layer.0.crossattention.self.key.weight"])
    torch.testing.assert_close(reward.mlp[7].weight, state["mlp.layers.7.weight"])
    images = torch.rand(3, 3, 48, 40, generator=torch.Generator().manual_seed(3))
    scores = reward(images, ["a red circle", "a blue star on a red background", "a red circle"])
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    assert not torch.allclose(scores[0], scores[1])


def test_imagereward_loading_is_strict(tiny_imagereward, tmp_path):
    from egrpo.rewards.imagereward import load_imagereward

    _, state = tiny_imagereward
    heads = {"vision_heads": 2, "text_heads": 2}
    torch.save(dict(state, **{"blip.itm_head.weight": torch.zeros(2, 16)}), tmp_path / "extra.pt")
    with pytest.raises(UserError, match="does not know"):
        load_imagereward(tmp_path / "extra.pt", heads)
    torch.save({k: v for k, v in state.items() if "crossattention.self.value.bias" not in k}, tmp_path / "missing.pt")
    with pytest.raises(UserError, match="missing"):
        load_imagereward(tmp_path / "missing.pt", heads)


def test_imagereward_full_layout_matches_blip_on_meta_device():
    """ViT-L/16 at 224 px + BERT-base with cross-attention + the 768-1024-128-64-16-1 head, no weights."""
    from transformers.models.blip.modeling_blip import BlipVisionModel
    from transformers.models.blip.modeling_blip_text import BlipTextModel

    from egrpo.rewards.imagereward import configs_from_state, head, split_state

    layout = imagereward_layout(width_v=1024, layers_v=24, patch=16, image=224, width_t=768, layers_t=12,
                                vocab=30524, positions=512)
    with torch.device("meta"):
        vision, text, mlp = split_state({k: torch.empty(s) for k, s in layout.items()})
        vision_config, text_config = configs_from_state(vision, text, "ImageReward-v1.0")
        models = (BlipVisionModel(vision_config), BlipTextModel(text_config, add_pooling_layer=False), head(mlp))
    for model, state in zip(models, (vision, text, mlp)):
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("position_ids")}
        assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert vision_config.num_attention_heads == 16 and text_config.num_attention_heads == 12


# --- each reward applies its original's preprocessing (rules: tests/unit/test_reward_preprocess.py) ----

def column_coded(height: int, width: int) -> torch.Tensor:
    """Float image whose red channel encodes the column index as a uint8 value."""
    red = torch.arange(width).float().div(255).view(1, 1, 1, width).expand(1, 1, height, width)
    return torch.cat([red, torch.zeros(1, 2, height, width)], dim=1)


@pytest.fixture(scope="module")
def byte_hps(tmp_path_factory):
    """An HPS checkpoint whose tokenizer is CLIP's byte alphabet (no merges), context 16."""
    from test_reward_preprocess import byte_level_clip_tokenizer

    root = tmp_path_factory.mktemp("byte_hps")
    tokenizer = byte_level_clip_tokenizer(16)
    tokenizer.save_pretrained(root / "tokenizer")
    g = torch.Generator().manual_seed(5)
    state = {k: torch.randn(s, generator=g) * 0.1 for k, s in openclip_layout(vocab=len(tokenizer), context=16).items()}
    torch.save({"state_dict": state}, root / "HPS_tiny.pt")
    return {"path": str(root / "HPS_tiny.pt"), "processor": str(root / "tokenizer"),
            "arch": {"vision_heads": 2, "text_heads": 2}}


def test_hps_letterboxes_and_clip_from_openclip_crops(byte_hps):
    from test_reward_preprocess import black

    hps = build_reward("hps", {"reward_models": {"hps": byte_hps}})
    clip = build_reward("clip", {"reward_models": {"clip": byte_hps}})
    images = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(1))
    boxed = hps.pixel_values(images)          # size 32: s = 32/56, H' = round(22.86) = 23, top (32-23)//2 = 4
    assert boxed.shape == (1, 3, 32, 32)
    for rows in (boxed[0, :, :4, :], boxed[0, :, 27:, :]):
        torch.testing.assert_close(rows, black().view(3, 1, 1).expand_as(rows))
    assert (boxed[0, :, 4:27, :] != black().view(3, 1, 1)).any(dim=0).all()
    cropped = clip.pixel_values(column_coded(32, 59))   # short side 32 already: crop at round(13.5) = 14 (floor: 13)
    red = cropped[0, 0, 0] * OPENAI_STD_RED + OPENAI_MEAN_RED
    assert [round(v) for v in (red * 255).tolist()] == list(range(14, 46))


OPENAI_MEAN_RED, OPENAI_STD_RED = 0.48145466, 0.26862954


def test_hps_cleans_and_truncates_prompts_like_open_clip(byte_hps):
    hps = build_reward("hps", {"reward_models": {"hps": byte_hps}})
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    dirty = hps(images, ["“Red” &amp; ﬁne", "ＲＥＤ   sky"])
    clean = hps(images, ['"red" & fine', "red sky"])
    torch.testing.assert_close(dirty, clean, atol=0, rtol=0)
    assert not torch.allclose(hps(images, ["red sky", "red sky"]), hps(images, ["blue sea", "blue sea"]))
    # context 16: [sot] + the first 14 byte tokens + [eot]; what follows them does not count
    same = images[:1].expand(2, -1, -1, -1)
    long = hps(same, ["abcdefghijklmnop and more words", "abcdefghijklmnopqrs"])
    torch.testing.assert_close(long[0], long[1], atol=0, rtol=0)
    assert not torch.allclose(long, hps(same, ["abcdefghijklmn", "abcdefghijklmn"]))  # "n</w>" is another token


def test_imagereward_resizes_the_short_side_and_crops_the_centre(tiny_imagereward):
    root, _ = tiny_imagereward
    reward = build_reward("imagereward", {"reward_models": {"imagereward": {
        "path": str(root / "ImageReward.pt"), "processor": str(root / "tokenizer"),
        "arch": {"vision_heads": 2, "text_heads": 2}}}})
    pixels = reward.pixel_values(column_coded(32, 59))   # size 32: crop at round(13.5) = 14, where floor gives 13
    red = pixels[0, 0, 0] * OPENAI_STD_RED + OPENAI_MEAN_RED
    assert [round(v) for v in (red * 255).tolist()] == list(range(14, 46))
    half = reward.pixel_values(torch.full((1, 3, 64, 80), 0.5))   # 0.5 -> uint8 128 -> 128/255
    torch.testing.assert_close(half[0, 0], torch.full((32, 32), (128 / 255 - OPENAI_MEAN_RED) / OPENAI_STD_RED))


def test_reward_precision_defaults_to_the_original(byte_hps, tiny_clip_dir):
    from egrpo.config import ConfigError, validate
    from egrpo.rewards.common import reward_precision

    assert reward_precision("hps", {}) == "amp"           # hpsv2: fp32 weights under float16 autocast on CUDA
    assert {reward_precision(n, {}) for n in ("imagereward", "pickscore", "clip", "tinyclip")} == {"float32"}
    assert reward_precision("pickscore", {"precision": "bfloat16"}) == "bfloat16"
    hps = build_reward("hps", {"reward_models": {"hps": byte_hps}})
    assert hps.model.dtype == torch.float32 and hps.precision == "amp"   # on CPU amp runs fp32, as hpsv2 does there
    pick = build_reward("pickscore", {"reward_models": {"pickscore": {"path": str(tiny_clip_dir), "precision": "bfloat16"}}})
    assert pick.model.dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="reward_models.hps.dtype: renamed to precision"):
        validate({"reward_models": {"hps": {"path": "x", "dtype": "float32"}}})


@pytest.fixture(scope="module")
def tiny_dfn(tmp_path_factory, tiny_clip_dir):
    """A tiny random-weight open_clip model directory in DFN5B's format: open_clip_config.json
    (quick_gelu, heads from head_width, squash resize, its own mean / std) + open_clip_model.safetensors."""
    from safetensors.torch import save_file

    directory = tmp_path_factory.mktemp("dfn") / "DFN5B-tiny"
    directory.mkdir()
    g = torch.Generator().manual_seed(3)
    vocab = len(__import__("transformers").CLIPTokenizer.from_pretrained(tiny_clip_dir))
    state = {k: torch.randn(s, generator=g) * 0.1 for k, s in openclip_layout(vocab=vocab).items()}
    state["logit_scale"] = torch.tensor(4.6)
    save_file(state, str(directory / "open_clip_model.safetensors"))
    (directory / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": {"embed_dim": 8, "quick_gelu": True,
                      "vision_cfg": {"image_size": 32, "layers": 2, "width": 16, "head_width": 8, "patch_size": 8},
                      "text_cfg": {"context_length": 16, "vocab_size": vocab, "width": 16, "heads": 2, "layers": 2}},
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bicubic",
                           "resize_mode": "squash"}}))
    return directory


def test_table_1_clip_is_dfn5b_scored_as_visualgrpo_does(tiny_dfn, tiny_clip_dir):
    """clip_dfn reads the architecture and the preprocessing from open_clip_config.json (as open_clip's
    create_model_from_pretrained('local-dir:...') does): quick_gelu, heads = width / head_width, both
    sides squashed to the model's size with PIL bicubic, its mean and std; the score is the cosine.
    The training reward `clip` on the same weights (gelu, short-side crop, OpenAI statistics) scores
    differently, which is why the report keeps the two apart."""
    import numpy as np
    from PIL import Image

    from egrpo.rewards import metric_label, preprocess

    cfg = {"reward_models": {"clip_dfn": {"path": str(tiny_dfn), "processor": str(tiny_clip_dir)}}}
    reward = build_reward("clip_dfn", cfg)
    vision, text = reward.model.config.vision_config, reward.model.config.text_config
    assert vision.hidden_act == text.hidden_act == "quick_gelu" and vision.num_attention_heads == 2
    images = torch.rand(2, 3, 40, 64, generator=torch.Generator().manual_seed(4))   # not square: squash shows
    prompts = ["a red circle", "a blue star"]
    # the same score by hand: PIL bicubic to 32 x 32 on the uint8 pixels, (x - 0.5) / 0.25, cosine
    pil = [Image.fromarray(preprocess.to_uint8(images)[i].permute(1, 2, 0).numpy()).resize((32, 32), Image.BICUBIC)
           for i in range(2)]
    pixels = (torch.stack([torch.from_numpy(np.asarray(p).copy()).permute(2, 0, 1) for p in pil]).float() / 255 - 0.5) / 0.25
    tokens = preprocess.openclip_tokenize(reward.tokenizer, prompts, 16)
    with torch.no_grad():
        image = reward.model.get_image_features(pixel_values=pixels)
        words = reward.model.get_text_features(input_ids=tokens)
    image, words = (getattr(t, "pooler_output", t) for t in (image, words))
    expected = torch.nn.functional.cosine_similarity(image, words, dim=-1)
    torch.testing.assert_close(reward(images, prompts), expected, atol=1e-5, rtol=0)
    laion = build_reward("clip", {"reward_models": {"clip": {"path": str(tiny_dfn / "open_clip_model.safetensors"),
                                                             "processor": str(tiny_clip_dir),
                                                             "arch": {"vision_heads": 2, "text_heads": 2}}}})
    assert not torch.allclose(laion(images, prompts), reward(images, prompts), atol=1e-4)
    assert metric_label("clip_dfn") != metric_label("clip") and "Table 1" in metric_label("clip_dfn")
    (tiny_dfn / "open_clip_config.json").rename(tiny_dfn / "moved.json")
    try:
        with pytest.raises(UserError, match="no open_clip_config.json"):
            build_reward("clip_dfn", cfg)
    finally:
        (tiny_dfn / "moved.json").rename(tiny_dfn / "open_clip_config.json")
