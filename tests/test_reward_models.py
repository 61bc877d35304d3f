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
