"""Small open_clip models built and saved by the tests (seeded random weights, never downloaded)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

VISION = {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32}
TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}

FAMILIES = {
    # classic CLIP: causal text transformer, argmax (end-of-text) pooling
    "clip": {"embed_dim": 32, "vision_cfg": VISION, "text_cfg": TEXT},
    # a SigLIP-style text tower: attends both ways, pools the last token, logit bias
    "siglip": {"embed_dim": 32, "vision_cfg": VISION, "custom_text": True, "init_logit_bias": -10.0,
               "text_cfg": {**TEXT, "context_length": 64, "no_causal_mask": True, "pool_type": "last",
                            "proj_bias": True}},
    # a classic CLIP class whose text transformer has no causal mask (MobileCLIP-like)
    "nocausal": {"embed_dim": 32, "vision_cfg": VISION, "text_cfg": {**TEXT, "no_causal_mask": True}},
    # CustomTextCLIP with open_clip's own causal text transformer
    "custom": {"embed_dim": 32, "vision_cfg": VISION, "custom_text": True, "text_cfg": TEXT},
    # OpenAI's activation (the `openai` tags switch it on)
    "quickgelu": {"embed_dim": 32, "quick_gelu": True, "vision_cfg": VISION, "text_cfg": TEXT},
    # RN50-style ModifiedResNet image tower (attention pooling)
    "resnet": {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16},
               "text_cfg": TEXT},
    # SigLIP-style with a Hugging Face tokenizer (built by `save_hf_tokenizer`, saved in the model folder)
    "siglip-hf": {"embed_dim": 32, "vision_cfg": VISION, "custom_text": True, "init_logit_bias": -10.0,
                  "text_cfg": {**TEXT, "context_length": 16, "vocab_size": 512, "no_causal_mask": True,
                               "pool_type": "last", "proj_bias": True, "hf_tokenizer_name": "local",
                               "tokenizer_kwargs": {"clean": "canonicalize"}}},
    # a timm ConvNeXt image tower (built from timm's code, random weights)
    "convnext": {"embed_dim": 32, "vision_cfg": {"timm_model_name": "convnext_atto", "timm_model_pretrained": False,
                                                 "timm_pool": "", "timm_proj": "linear", "image_size": 32},
                 "text_cfg": TEXT},
}


def build(family: str, seed: int = 0):
    import open_clip

    cfg = copy.deepcopy(FAMILIES[family])
    custom = cfg.pop("custom_text", False)
    torch.manual_seed(seed)
    model = (open_clip.CustomTextCLIP if custom else open_clip.CLIP)(**cfg)
    # Random init gives near-identical embeddings; spread them so probabilities differ visibly.
    with torch.no_grad():
        model.logit_scale.fill_(4.0)
        for p in model.parameters():
            if p.ndim >= 2:
                p.mul_(3.0)
    return model.eval()


def save_hf_tokenizer(directory: Path, vocab_size: int = 512) -> None:
    """A real Hugging Face fast tokenizer (WordPiece, trained here on a small corpus, end-of-text appended, padded)
    saved with transformers' save_pretrained: what open_clip's HFTokenizer loads for a SigLIP-style model."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [f"a {q} photo of the {c} {s}" for q in ("good", "bad", "blurry", "big", "small")
              for c in ("red", "blue", "green", "yellow", "pink", "purple") for s in ("circle", "square", "star",
                                                                                      "heart", "cross", "wonton")]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=vocab_size,
                                                                    special_tokens=["[PAD]", "[UNK]", "</s>"]))
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                             special_tokens=[("</s>", tokenizer.token_to_id("</s>"))])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]",
                            eos_token="</s>").save_pretrained(str(directory))


def save_local_dir(family: str, directory: Path, seed: int = 0) -> Path:
    """Write open_clip's local-dir layout: open_clip_config.json + open_clip_model.safetensors."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    if "hf_tokenizer_name" in FAMILIES[family]["text_cfg"]:
        save_hf_tokenizer(directory, FAMILIES[family]["text_cfg"]["vocab_size"])
    model = build(family, seed)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "open_clip_model.safetensors"))
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": FAMILIES[family]}))
    return directory
