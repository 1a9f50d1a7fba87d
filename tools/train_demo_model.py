"""Train the demo model: a small open_clip CLIP on procedurally drawn coloured shapes.

    python tools/train_demo_model.py --out clipcli/demo/model            # the shipped model
    python tools/train_demo_model.py --steps 5 --out /tmp/smoke          # CI smoke test

Images come from clipcli.demo.shapes (fresh every step); captions put the label
("red circle") into the CLIP paper's 80 ImageNet templates plus a few plainer
sentences, so the text tower learns the sentence shapes users' templates produce.
The loss is CLIP's symmetric cross-entropy with a learned temperature; several
images of one class in a batch are all positives for each other (soft targets).
Seeded: the same arguments give the same model on the same machine.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import open_clip  # noqa: E402
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD  # noqa: E402

from clipcli.demo import shapes  # noqa: E402
from clipcli.templates import load_template_set  # noqa: E402

CONTEXT_LENGTH = 32
IMAGE_SIZE = 48
MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 4, "width": 96, "head_width": 32, "patch_size": 8, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3,
                 "mlp_ratio": 2.0},
}
PREPROCESS_CFG = {"mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD),
                  "interpolation": "bicubic", "resize_mode": "shortest"}
EXTRA_TEMPLATES = ["{}", "a {}.", "a {} shape.", "an image of a {}.", "a picture of the {}.",
                   "a {} on a plain background.", "a simple drawing of a {}.", "{} icon"]


def caption_tokens(tokenizer, labels: list[str]) -> tuple[torch.Tensor, int]:
    """Tokens for every (label, template) caption: [labels, templates, context]."""
    templates = load_template_set("imagenet").templates + EXTRA_TEMPLATES
    texts = [t.replace("{}", name) for name in labels for t in templates]
    return tokenizer(texts).view(len(labels), len(templates), -1), len(templates)


def normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def draw_batch(label_ids: torch.Tensor, labels: list[str], style, gen) -> torch.Tensor:
    pairs = [labels[i].split(" ", 1) for i in label_ids.tolist()]
    return shapes.draw([c for c, _ in pairs], [s for _, s in pairs], size=IMAGE_SIZE, style=style, generator=gen)


def clip_loss(model, images, tokens, label_ids) -> torch.Tensor:
    image_emb = model.encode_image(images, normalize=True)
    text_emb = model.encode_text(tokens, normalize=True)
    logits = model.logit_scale.exp() * image_emb @ text_emb.T
    same = (label_ids[:, None] == label_ids[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


@torch.inference_mode()
def zero_shot_accuracy(model, tokenizer, candidates: list[str], truth: list[str], style, templates,
                       per_label: int, seed: int) -> float:
    classifier = open_clip.build_zero_shot_classifier(model, tokenizer, candidates, templates)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.tensor([candidates.index(t) for t in truth for _ in range(per_label)])
    correct = 0
    for chunk in ids.split(256):
        images = normalise(draw_batch(chunk, candidates, style, gen))
        logits = model.encode_image(images, normalize=True) @ classifier
        correct += (logits.argmax(dim=1) == chunk).sum().item()
    return correct / len(ids)


def save(model, out: Path) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))
    config = {"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG}
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")


def report(model, tokenizer, per_label: int) -> dict:
    model.eval()
    candidates = shapes.all_labels()
    imagenet = load_template_set("imagenet").templates
    results = {
        "seen_80_templates": zero_shot_accuracy(model, tokenizer, candidates, shapes.seen_labels(),
                                                shapes.TRAINING, imagenet, per_label, 1001),
        "seen_shifted_style_80_templates": zero_shot_accuracy(model, tokenizer, candidates, shapes.seen_labels(),
                                                              shapes.SHIFTED, imagenet, per_label, 1002),
        "held_out_80_templates": zero_shot_accuracy(model, tokenizer, candidates, shapes.held_out_labels(),
                                                    shapes.TRAINING, imagenet, per_label, 1003),
        "seen_single_template": zero_shot_accuracy(model, tokenizer, candidates, shapes.seen_labels(),
                                                   shapes.TRAINING, ["a photo of a {}."], per_label, 1001),
        "held_out_single_template": zero_shot_accuracy(model, tokenizer, candidates, shapes.held_out_labels(),
                                                       shapes.TRAINING, ["a photo of a {}."], per_label, 1003),
    }
    model.train()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=2600)
    parser.add_argument("--batch-size", type=int, default=192)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-per-label", type=int, default=40)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()

    model = open_clip.CLIP(**MODEL_CFG)
    tokenizer = open_clip.SimpleTokenizer(context_length=CONTEXT_LENGTH)
    labels = shapes.all_labels()
    seen_ids = torch.tensor([labels.index(name) for name in shapes.seen_labels()])
    tokens, n_templates = caption_tokens(tokenizer, labels)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    warmup = max(1, min(200, args.steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))

    model.train()
    for step in range(args.steps):
        label_ids = seen_ids[torch.randint(len(seen_ids), (args.batch_size,), generator=gen)]
        template_ids = torch.randint(n_templates, (args.batch_size,), generator=gen)
        images = normalise(draw_batch(label_ids, labels, shapes.TRAINING, gen))
        loss = clip_loss(model, images, tokens[label_ids, template_ids], label_ids)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  scale {model.logit_scale.exp().item():.1f}  "
                  f"{time.perf_counter() - started:.0f}s", flush=True)

    save(model, args.out)
    print(f"saved to {args.out}  training wall time {time.perf_counter() - started:.0f}s", flush=True)
    results = report(model, tokenizer, args.eval_per_label)
    for name, value in results.items():
        print(f"zero-shot top-1 {name}: {value:.1%}")
    (args.out / "training_report.json").write_text(json.dumps(
        {"steps": args.steps, "batch_size": args.batch_size, "seed": args.seed,
         "wall_time_s": round(time.perf_counter() - started), "accuracy": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
