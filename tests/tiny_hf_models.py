"""Small Hugging Face transformers CLIP-family models built and saved by the tests (seeded random weights, tokenizers
made here from local files, never downloaded): what `save_pretrained` writes for CLIP, Chinese-CLIP, SigLIP,
MetaCLIP 2 and SigLIP 2.

- clip: `CLIPModel` with CLIP's byte-level BPE tokenizer, its vocabulary and merges read from open_clip's
  `bpe_simple_vocab_16e6.txt.gz` (the same file OpenAI's tokenizer comes from);
- chinese_clip: `ChineseCLIPModel` with a BERT WordPiece tokenizer whose vocabulary is Chinese characters (one token
  each, as Chinese-CLIP's own vocabulary tokenizes Chinese) plus a few English words;
- siglip: `SiglipModel` with a SentencePiece-style Unigram tokenizer (Metaspace, `</s>` appended, pad to 64);
- metaclip_2: `MetaClip2Model` (MetaCLIP 2: CLIP's towers, a multilingual tokenizer) with that Unigram tokenizer;
- siglip2: `Siglip2Model` with transformers' `Siglip2Tokenizer` (Gemma-style byte-fallback BPE, lower-cased, padded
  on the left) over letters, Chinese characters and a few merged words, and the NaFlex image processor (8-pixel
  patches, at most 20 of them: images keep their aspect ratio, positions are resized and padded).
Each folder also gets the family's image processor (the Pillow one) saved beside the model.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import torch

FAMILIES = ("clip", "chinese_clip", "siglip", "metaclip_2", "siglip2")
NAFLEX_PATCHES = 20  # the tiny SigLIP 2's max_num_patches (its position grid is 4 x 4)
IMAGE = 32
TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
          "image_size": IMAGE, "patch_size": 8}
CHINESE = "馄饨小笼包饺子面条米饭汤猫狗红蓝绿黄色的圆方形星心十字照片一张这是图中有个大好坏模糊清晰"
WORDS = ["a", "photo", "of", "the", "red", "blue", "green", "circle", "square", "star", "wonton", "dumpling", "cat",
         "dog", "this", "is", ".", ",", "!", "'", "s"]


def clip_tokenizer():
    """transformers' CLIPTokenizer over OpenAI's vocabulary (49408 tokens), built from open_clip's BPE file."""
    from transformers import CLIPTokenizer

    from clipcli.tokenizer import MERGES, _byte_chars, vocab_path

    with gzip.open(vocab_path(), "rt", encoding="utf-8") as handle:
        merges = handle.read().split("\n")[1:MERGES + 1]
    base = list(_byte_chars().values())
    tokens = base + [c + "</w>" for c in base] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[tuple(m.split()) for m in merges],
                         model_max_length=77)


def chinese_tokenizer():
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(CHINESE), *WORDS]
    return BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, model_max_length=52)


def siglip_tokenizer():
    """A Unigram (SentencePiece-style) fast tokenizer: lower-cased, Metaspace words, `</s>` appended."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(f"▁{w}", -2.0) for w in WORDS] + [(w, -3.0) for w in WORDS]
    pieces += [(c, -4.0) for c in dict.fromkeys(CHINESE)] + [("▁", -5.0)]
    pieces += [(c, -6.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=64)


def siglip2_tokenizer():
    """transformers' Siglip2Tokenizer (Gemma's byte-fallback BPE) over a small vocabulary: bytes, letters, Chinese
    characters, and merges spelling a few words with their leading `▁`."""
    from transformers import Siglip2Tokenizer

    vocab = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", *(f"<0x{i:02X}>" for i in range(256))]
    vocab += list(dict.fromkeys("▁abcdefghijklmnopqrstuvwxyz0123456789.,!'" + CHINESE))
    merges = []
    for word in ("photo", "of", "red", "blue", "circle", "square", "dog", "wonton"):
        spelled = "▁"
        for char in word:
            merges.append((spelled, char))
            spelled += char
            if spelled not in vocab:
                vocab.append(spelled)
    return Siglip2Tokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, model_max_length=64)


def build(family: str, seed: int = 0):
    """(model, tokenizer, image processor), the model in eval mode with spread-out random weights."""
    import transformers as tf

    torch.manual_seed(seed)
    if family == "clip":
        tokenizer = clip_tokenizer()
        config = tf.CLIPConfig(text_config={**TEXT, "vocab_size": len(tokenizer), "max_position_embeddings": 77,
                                            "eos_token_id": tokenizer.eos_token_id,
                                            "bos_token_id": tokenizer.bos_token_id,
                                            "pad_token_id": tokenizer.pad_token_id},
                               vision_config=VISION, projection_dim=32)
        model = tf.CLIPModel(config)
        processor = tf.CLIPImageProcessorPil(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})
    elif family == "chinese_clip":
        tokenizer = chinese_tokenizer()
        config = tf.ChineseCLIPConfig(text_config={**TEXT, "vocab_size": len(tokenizer), "max_position_embeddings": 52},
                                      vision_config=VISION, projection_dim=32)
        model = tf.ChineseCLIPModel(config)
        processor = tf.ChineseCLIPImageProcessorPil(size={"shortest_edge": IMAGE},
                                                    crop_size={"height": IMAGE, "width": IMAGE})
    elif family == "siglip":
        tokenizer = siglip_tokenizer()
        config = tf.SiglipConfig(text_config={**TEXT, "vocab_size": len(tokenizer), "max_position_embeddings": 64,
                                              "pad_token_id": 0, "eos_token_id": 1},
                                 vision_config=VISION)
        model = tf.SiglipModel(config)
        processor = tf.SiglipImageProcessorPil(size={"height": IMAGE, "width": IMAGE})
    elif family == "metaclip_2":  # CLIP's architecture with a multilingual (SentencePiece-style) tokenizer
        tokenizer = siglip_tokenizer()
        tokenizer.model_max_length = 77
        config = tf.MetaClip2Config(text_config={**TEXT, "vocab_size": len(tokenizer), "max_position_embeddings": 77,
                                                 "eos_token_id": 1, "pad_token_id": 0, "bos_token_id": None},
                                    vision_config=VISION, projection_dim=32)
        model = tf.MetaClip2Model(config)
        processor = tf.CLIPImageProcessorPil(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})
    elif family == "siglip2":
        tokenizer = siglip2_tokenizer()
        config = tf.Siglip2Config(text_config={**TEXT, "vocab_size": len(tokenizer), "max_position_embeddings": 64,
                                               "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2},
                                  vision_config={**{k: v for k, v in VISION.items() if k != "image_size"},
                                                 "num_patches": 16})
        model = tf.Siglip2Model(config)
        processor = tf.Siglip2ImageProcessorPil(patch_size=8, max_num_patches=NAFLEX_PATCHES)
    else:
        raise ValueError(family)
    with torch.no_grad():  # random init gives near-identical embeddings: spread them so probabilities differ
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.mul_(3.0)
        model.logit_scale.fill_(4.6 if family == "chinese_clip" else 2.0)
        if getattr(model, "logit_bias", None) is not None:
            model.logit_bias.fill_(-3.0)
    return model.eval(), tokenizer, processor


def save(family: str, directory: Path, seed: int = 0) -> Path:
    """`save_pretrained` of the model, its tokenizer and its image processor into one folder."""
    model, tokenizer, processor = build(family, seed)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    processor.save_pretrained(str(directory))
    return directory


# --- open_clip's multilingual models (a Hugging Face text tower inside open_clip), cached offline ------------------

MULTILINGUAL_OPEN_CLIP = {
    # open_clip hub repository -> the transformers text model its open_clip_config.json names, and its pooling
    "laion/CLIP-ViT-B-32-xlm-roberta-base-laion5B-s13B-b90k": ("xlm-roberta-base", "mean_pooler", "xlm-roberta"),
    "visheratin/nllb-clip-base-oc": ("facebook/nllb-200-distilled-600M", "cls_pooler", "m2m_100"),
}


def _hub_put(cache: Path, repo: str, folder_writer) -> Path:
    """Write a repository into a Hugging Face cache folder (models--org--name/snapshots/<commit>, refs/main)."""
    entry = cache / f"models--{repo.replace('/', '--')}"
    snapshot = entry / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True, exist_ok=True)
    folder_writer(snapshot)
    (entry / "refs").mkdir(exist_ok=True)
    (entry / "refs" / "main").write_text("0" * 40)
    return snapshot


def _multilingual_tokenizer(kind: str):
    """XLM-R's or NLLB's tokenizer class over a small vocabulary (Latin words or letters and Chinese characters)."""
    pieces = [(f"▁{w}", -2.0) for w in WORDS] + [(c, -4.0) for c in dict.fromkeys(CHINESE)] + [("▁", -5.0)]
    pieces += [(c, -6.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    if kind == "xlm-roberta":
        from transformers import XLMRobertaTokenizer

        specials = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
        return XLMRobertaTokenizer(vocab=specials + pieces + [("<mask>", 0.0)])
    from transformers import NllbTokenizer  # byte-pair: characters, no merges; language codes as special tokens

    chars = ["<s>", "<pad>", "</s>", "<unk>", "▁", *dict.fromkeys(CHINESE + "abcdefghijklmnopqrstuvwxyz0123456789.,"),
             "eng_Latn", "zho_Hans", "<mask>"]
    return NllbTokenizer(vocab={c: i for i, c in enumerate(chars)}, merges=[], src_lang="eng_Latn")


def save_multilingual_open_clip(cache: Path, repo: str, seed: int = 0) -> None:
    """A tiny open_clip model with a transformers text tower, in the Hugging Face cache layout: the open_clip repo
    (open_clip_config.json + open_clip_model.safetensors) and the text model's repo (config.json + tokenizer), as
    a first online run leaves them.  Run with HF_HUB_CACHE pointing at `cache` (open_clip reads the text model's
    config from the default cache)."""
    import json

    import open_clip
    import transformers as tf
    from safetensors.torch import save_file

    text_repo, pooler, kind = MULTILINGUAL_OPEN_CLIP[repo]
    tokenizer = _multilingual_tokenizer(kind)
    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    if kind == "xlm-roberta":
        config = tf.XLMRobertaConfig(vocab_size=len(tokenizer), max_position_embeddings=80, pad_token_id=1, **small)
    else:
        config = tf.M2M100Config(vocab_size=len(tokenizer), d_model=32, encoder_layers=2, decoder_layers=2,
                                 encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                                 decoder_ffn_dim=64, max_position_embeddings=80, pad_token_id=1)
    _hub_put(cache, text_repo, lambda folder: (config.save_pretrained(str(folder)),
                                               tokenizer.save_pretrained(str(folder))))
    model_cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8,
                                                 "head_width": 32},
                 "text_cfg": {"hf_model_name": text_repo, "hf_tokenizer_name": text_repo, "hf_pooler_type": pooler,
                              "hf_proj_type": "linear", "context_length": 32}}
    torch.manual_seed(seed)
    text_cfg = {**model_cfg["text_cfg"], "hf_model_pretrained": False}  # a random text tower from the cached config
    model = open_clip.CustomTextCLIP(**{**model_cfg, "text_cfg": text_cfg})
    with torch.no_grad():
        model.logit_scale.fill_(4.0)
        for p in model.parameters():
            if p.ndim >= 2:
                p.mul_(3.0)

    def write(folder: Path) -> None:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(folder / "open_clip_model.safetensors"))
        (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {
            "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}}))

    _hub_put(cache, repo, write)


def open_clip_reference(repo: str, image: str, labels: list[str], template: str) -> list[float]:
    """open_clip's own zero-shot probabilities for one image (independent of clipcli)."""
    import open_clip
    from PIL import Image

    model, preprocess = open_clip.create_model_from_pretrained(f"hf-hub:{repo}")
    tokenizer = open_clip.get_tokenizer(f"hf-hub:{repo}")
    with torch.no_grad():
        weights = open_clip.build_zero_shot_classifier(model.eval(), tokenizer, labels, [template])
        features = model.encode_image(preprocess(Image.open(image).convert("RGB")).unsqueeze(0), normalize=True)
        return (model.logit_scale.exp() * features @ weights).softmax(dim=-1)[0].tolist()


if __name__ == "__main__":  # python tiny_hf_models.py CACHE REPO IMAGE LABEL...: build (in the cache HF_HUB_CACHE
    import json  # names), then print open_clip's probabilities; what the multilingual tests run in a subprocess
    import sys

    save_multilingual_open_clip(Path(sys.argv[1]), sys.argv[2])
    print(json.dumps(open_clip_reference(sys.argv[2], sys.argv[3], sys.argv[4:], "a photo of a {}.")))
