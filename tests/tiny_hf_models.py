"""Small Hugging Face transformers CLIP-family models built and saved by the tests (seeded random weights, tokenizers
made here from local files, never downloaded): what `save_pretrained` writes for CLIP, Chinese-CLIP and SigLIP.

- clip: `CLIPModel` with CLIP's byte-level BPE tokenizer, its vocabulary and merges read from open_clip's
  `bpe_simple_vocab_16e6.txt.gz` (the same file OpenAI's tokenizer comes from);
- chinese_clip: `ChineseCLIPModel` with a BERT WordPiece tokenizer whose vocabulary is Chinese characters (one token
  each, as Chinese-CLIP's own vocabulary tokenizes Chinese) plus a few English words;
- siglip: `SiglipModel` with a SentencePiece-style Unigram tokenizer (Metaspace, `</s>` appended, pad to 64);
- metaclip_2: `MetaClip2Model` (MetaCLIP 2: CLIP's towers, a multilingual tokenizer) with that Unigram tokenizer.
Each folder also gets the family's image processor (the Pillow one) saved beside the model.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import torch

FAMILIES = ("clip", "chinese_clip", "siglip", "metaclip_2")
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


def build(family: str, seed: int = 0):
    """(model, tokenizer, image processor), the model in eval mode with spread-out random weights."""
    import transformers as tf

    torch.manual_seed(seed)
    if family == "clip":
        tokenizer = clip_tokenizer()
        config = tf.CLIPConfig(text_config={**TEXT, "vocab_size": len(tokenizer), "max_position_embeddings": 77,
                                            "eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id,
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
