"""Golden tests: each reward sees the pixels and tokens its original package would give its model.

Expected values come from the originals' rules written out by hand (egrpo/rewards/preprocess.py's
docstring): hpsv2's letterbox, torchvision's Resize + CenterCrop as ImageReward and open_clip
apply them, and open_clip's text cleaning and `tokenize`.
"""
import regex
import torch

from egrpo.rewards import preprocess
from egrpo.rewards.preprocess import OPENAI_MEAN, OPENAI_STD


def black() -> torch.Tensor:
    """What a zero pixel becomes after normalization: -mean / std per channel."""
    return -torch.tensor(OPENAI_MEAN) / torch.tensor(OPENAI_STD)


# --- images --------------------------------------------------------------------------------------

def test_images_are_scored_as_the_uint8_pixels_a_pil_image_holds():
    x = torch.tensor([0.0, 0.5, 1 / 255 * 0.49, 1 / 255 * 0.51, 1.2, -0.1]).view(1, 1, 1, 6).expand(1, 3, 1, 6)
    assert preprocess.to_uint8(x)[0, 0, 0].tolist() == [0, 128, 0, 1, 255, 0]  # round(127.5) = 128 (half to even)


def test_letterbox_geometry_scales_the_longest_side_and_centres():
    # (H, W, size) -> (H', W', top, left): s = size / max(H, W), H' = round(H s), top = (size - H') // 2
    assert preprocess.letterbox_geometry(720, 1280, 224) == (126, 224, 49, 0)
    assert preprocess.letterbox_geometry(1280, 720, 224) == (224, 126, 0, 49)
    assert preprocess.letterbox_geometry(5, 12, 8) == (3, 8, 2, 0)     # round(3.33) = 3; odd padding: 2 top, 3 bottom
    assert preprocess.letterbox_geometry(9, 16, 8) == (4, 8, 2, 0)     # round(4.5) = 4 (Python rounds half to even)
    assert preprocess.letterbox_geometry(300, 300, 224) == (224, 224, 0, 0)


def test_letterbox_pads_black_around_the_resized_image():
    pixels = torch.full((1, 3, 5, 12), 200, dtype=torch.uint8)
    out = preprocess.letterbox(pixels, 8)
    assert out.shape == (1, 3, 8, 8)
    assert (out[..., :2, :] == 0).all() and (out[..., 5:, :] == 0).all()   # 2 rows above, 3 below
    torch.testing.assert_close(out[..., 2:5, :], torch.full((1, 3, 3, 8), 200 / 255), atol=1e-6, rtol=0)


def test_letterbox_keeps_bicubic_overshoot_unclamped():
    pixels = torch.zeros(1, 3, 6, 12, dtype=torch.uint8)
    pixels[..., 6:] = 255                     # a sharp black/white edge
    out = preprocess.letterbox(pixels, 8)[..., 2:6, :]
    assert out.min() < 0 and out.max() > 1    # torchvision's tensor resize does not clamp floats


def test_short_side_geometry_truncates_the_long_side_and_rounds_the_crop():
    # (H, W, size) -> (H', W', top, left): short side -> size, long -> int(size * long / short),
    # crop offset round((L' - size) / 2)
    assert preprocess.short_side_geometry(720, 1280, 224) == (224, 398, 0, 87)   # int(398.2); round(87.0)
    assert preprocess.short_side_geometry(300, 700, 224) == (224, 522, 0, 149)   # int(522.7) = 522, not 523
    assert preprocess.short_side_geometry(224, 399, 224) == (224, 399, 0, 88)    # round(87.5) = 88, floor gives 87
    assert preprocess.short_side_geometry(399, 224, 224) == (399, 224, 88, 0)
    assert preprocess.short_side_geometry(224, 397, 224) == (224, 397, 0, 86)    # round(86.5) = 86


def test_short_side_crop_takes_the_centre_columns():
    width = 399                                     # no resize (short side already 224): only the crop acts
    pixels = torch.arange(width).remainder(256).to(torch.uint8).view(1, 1, 1, width).expand(1, 3, 224, width).clone()
    out = preprocess.short_side_center_crop(pixels, 224)
    assert out.shape == (1, 3, 224, 224)
    assert round(out[0, 0, 0, 0].item() * 255) == 88 and round(out[0, 0, 0, -1].item() * 255) == (88 + 223) % 256


def test_short_side_crop_resamples_uint8_like_pil():
    from PIL import Image

    pixels = torch.randint(0, 256, (1, 3, 300, 700), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    out = preprocess.short_side_center_crop(pixels, 224)
    assert torch.equal(out * 255, (out * 255).round())          # uint8 values, as ToTensor of a PIL image
    pil = Image.fromarray(pixels[0].permute(1, 2, 0).numpy()).resize((522, 224), Image.BICUBIC)
    expected = torch.tensor(list(pil.crop((149, 0, 149 + 224, 224)).getdata()), dtype=torch.float32)
    torch.testing.assert_close(out[0].permute(1, 2, 0).reshape(-1, 3), expected / 255)


def test_normalize_uses_openai_clip_statistics():
    out = preprocess.normalize(torch.zeros(1, 3, 2, 2))
    torch.testing.assert_close(out[0, :, 0, 0], black())


# --- text ----------------------------------------------------------------------------------------

def test_openclip_clean_fixes_text_like_open_clip():
    clean = preprocess.openclip_clean
    assert clean("“A Cat” in the Rain") == '"a cat" in the rain'            # curly quotes (ftfy)
    assert clean("salt &amp;amp; pepper") == "salt & pepper"              # HTML entities, unescaped twice
    assert clean("ﬁsh and ﬂowers") == "fish and flowers"                  # ligatures (ftfy)
    assert clean("ＦＵＬＬ width １２３") == "full width 123"                 # full-width letters (ftfy)
    assert clean("  two\n\tlines   here ") == "two lines here"            # whitespace runs
    assert clean("naïve café") == "naïve café"                            # accents are kept


def byte_level_clip_tokenizer(max_length: int = 77):
    """A CLIP BPE tokenizer with CLIP's byte alphabet and no merges: every character's UTF-8 bytes
    are their own tokens, so any two different strings get different ids."""
    from transformers import CLIPTokenizer

    chars = list(byte_alphabet().values())
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def byte_alphabet() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


OPEN_CLIP_SPLIT = regex.compile(r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                                regex.IGNORECASE)


def open_clip_ids(clean_text: str, tokenizer, context: int) -> list[int]:
    """open_clip's `tokenize` on already-cleaned text with a merge-free vocabulary, by its rules:
    split by its pattern, each piece's UTF-8 bytes (the last with </w>), [sot] ... [eot], truncate
    with eot last, zero pad."""
    vocab = tokenizer.get_vocab()
    ids = [tokenizer.bos_token_id]
    for piece in OPEN_CLIP_SPLIT.findall(clean_text):
        if piece in ("<start_of_text>", "<end_of_text>"):   # its BPE cache maps them to its special ids
            ids.append(tokenizer.bos_token_id if piece == "<start_of_text>" else tokenizer.eos_token_id)
            continue
        chars = [byte_alphabet()[b] for b in piece.encode("utf-8")]
        ids += [vocab[c] for c in chars[:-1]] + [vocab[chars[-1] + "</w>"]]
    ids.append(tokenizer.eos_token_id)
    if len(ids) > context:
        ids = ids[:context]
        ids[-1] = tokenizer.eos_token_id
    return ids + [0] * (context - len(ids))


def test_openclip_tokenize_matches_open_clip_rules_on_dirty_prompts():
    tokenizer = byte_level_clip_tokenizer()
    prompts = {
        "“A Cat” on a mat": '"a cat" on a mat',
        "salt &amp; pepper, 2 cups": "salt & pepper, 2 cups",
        "a ﬁeld of ﬂowers": "a field of flowers",
        "ＲＥＤ apples": "red apples",
        "it's a dog's life": "it's a dog's life",
        "a very long prompt " * 12: ("a very long prompt " * 12).strip(),   # > 77 tokens
        "a cat <start_of_text> on <END_OF_TEXT> a mat": "a cat <start_of_text> on <end_of_text> a mat",
    }
    got = preprocess.openclip_tokenize(tokenizer, list(prompts), 77)
    assert got.shape == (len(prompts), 77)
    for row, clean in zip(got, prompts.values()):
        assert row.tolist() == open_clip_ids(clean, tokenizer, 77)
    typed = got[-1][got[-1] != 0].tolist()   # open_clip's typed special strings are its sot / eot ids
    assert typed.count(tokenizer.bos_token_id) == 2 and typed.count(tokenizer.eos_token_id) == 2
    long = got[-2]
    assert long[0] == tokenizer.bos_token_id and long[-1] == tokenizer.eos_token_id and (long != 0).all()
    # without the cleaning the curly quotes are other bytes: the test above can fail
    raw = tokenizer("“a cat” on a mat", add_special_tokens=False)["input_ids"]
    assert [tokenizer.bos_token_id] + raw + [tokenizer.eos_token_id] != got[0][got[0] != 0].tolist()


def _saved(tokenizer) -> str:
    import tempfile

    path = tempfile.mkdtemp(prefix="egrpo-tok-")
    tokenizer.save_pretrained(path)
    return path


def test_special_token_strings_in_a_prompt_are_text():
    """HPS and CLIP tokenize as open_clip does: a prompt has no special tokens. With a tokenizer that
    pads with "!" (as laion/CLIP-ViT-H-14-laion2B-s32B-b79K does) and has merges for "!!!",
    "amazing!!!" ends in the "!!!</w>" token (transformers' default made it three pad ids), and a
    typed "<|endoftext|>" is its characters, split by open_clip's pattern, not the end of the prompt."""
    from transformers import CLIPTokenizer

    chars = list(byte_alphabet().values())
    tokens = chars + [c + "</w>" for c in chars] + ["!!", "!!!</w>", "<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[("!", "!"), ("!!", "!</w>")], model_max_length=77, pad_token="!")
    assert tokenizer.pad_token_id == vocab["!"]
    got = preprocess.openclip_tokenize(tokenizer, ["amazing!!! <|endoftext|> ok"], 77)[0]
    text = ["a", "m", "a", "z", "i", "n", "g</w>", "!!!</w>",                      # amazing !!!
            "<", "|</w>", "e", "n", "d", "o", "f", "t", "e", "x", "t</w>", "|", "></w>",  # <| endoftext |>
            "o", "k</w>"]
    expected = [tokenizer.bos_token_id] + [vocab[t] for t in text] + [tokenizer.eos_token_id]
    assert got[:len(expected)].tolist() == expected and not got[len(expected):].any()
    default = tokenizer("amazing!!! <|endoftext|> ok", add_special_tokens=False)["input_ids"]
    assert vocab["!!!</w>"] not in default and tokenizer.pad_token_id in default   # what the fix changes
    from transformers import CLIPTokenizerFast   # the same ids whichever pre-tokenizer transformers uses

    fast = CLIPTokenizerFast.from_pretrained(_saved(tokenizer))
    assert preprocess.openclip_tokenize(fast, ["amazing!!! <|endoftext|> ok"], 77)[0].tolist() == got.tolist()
