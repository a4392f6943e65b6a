"""Tiny saved FashionBERT folders (a pretraining folder and a retrieval folder from the same weights), shared by the
tests that load them back: tests/test_remote_code_isolated.py and tests/test_fashion_pipeline.py."""

from pathlib import Path

import torch
from transformers import BertTokenizer

from xmodal import (
    FashionBertConfig,
    FashionBertForImageTextRetrieval,
    FashionBertForPreTraining,
    FashionBertImageProcessor,
    FashionBertProcessor,
)
from xmodal.hub import save_model_folder

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "black", "silk", "wool", "dress", "coat", "sleeve"]
VOCAB += ["##less", ","]


def save_tiny_fashionbert_folders(root: Path) -> dict:
    """
    Writes `root/fashionbert` and `root/fashionbert_retrieval` (no dual-encoder heads: the paper's model, ranked by the
    alignment log-odds), and `root/fashionbert_fused` (a pretraining folder with dual-encoder heads and a fusion weight
    in its config); returns the processor, the first two models, and the third as a retrieval model (`fused`).
    """
    (root / "vocab").mkdir()
    (root / "vocab" / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    processor = FashionBertProcessor(
        FashionBertImageProcessor(image_size=16, patch_grid=4), BertTokenizer.from_pretrained(root / "vocab"),
        max_text_length=16,
    )  # fmt: skip
    config = FashionBertConfig(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=16, image_size=16, patch_grid=4, patch_encoder_type="pixels", initializer_range=0.2,
    )  # fmt: skip
    torch.manual_seed(0)
    pretraining = FashionBertForPreTraining(config).eval()
    save_model_folder(root / "fashionbert", pretraining, processor)
    retrieval = FashionBertForImageTextRetrieval.from_pretrained(root / "fashionbert").eval()
    save_model_folder(root / "fashionbert_retrieval", retrieval, processor)
    torch.manual_seed(1)
    with_heads = FashionBertForPreTraining(FashionBertConfig(**{**config.to_diff_dict(), **FUSED})).eval()
    save_model_folder(root / "fashionbert_fused", with_heads, processor)
    fused = FashionBertForImageTextRetrieval.from_pretrained(root / "fashionbert_fused").eval()
    return {"root": root, "processor": processor, "pretraining": pretraining, "retrieval": retrieval, "fused": fused}


# The dual-encoder heads and fusion weight of the `fashionbert_fused` folder.
FUSED = {"contrastive_projection_dim": 8, "fusion_weight": 0.4, "contrastive_logit_scale_init": 1.5}


def score_matrix(model: FashionBertForImageTextRetrieval, processor, texts: list[str], images: list) -> torch.Tensor:
    """
    `(num_texts, num_images)` scores as xmodal ranks by them: the alignment log-odds (`score_pairs`), fused with the
    cosine of the dual-encoder embeddings (`fuse_scores`) when the config has a fusion weight.
    """
    encoded = processor(text=texts, return_tensors="pt")
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    text_indices = torch.arange(len(texts)).repeat_interleave(len(images))
    image_indices = torch.arange(len(images)).repeat(len(texts))
    with torch.no_grad():
        features = model.bert.get_patch_features(pixels)
        scores = model.score_pairs(
            encoded["input_ids"], encoded["attention_mask"], features, text_indices, image_indices,
            token_type_ids=encoded["token_type_ids"],
        )  # fmt: skip
        if model.config.fusion_weight is not None:
            text_vectors = model.bert.get_text_embeddings(encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"])
            image_vectors = model.bert.get_image_embeddings(patch_features=features)
            similarity = (text_vectors[text_indices] * image_vectors[image_indices]).sum(-1)
            scores = model.bert.fuse_scores(scores, similarity)
    return scores.reshape(len(texts), len(images))


GOLDEN_FASHIONBERT = Path(__file__).resolve().parent / "fixtures" / "golden" / "fashionbert_pretraining"


def golden_fashionbert_with_heads(projection_dim: int = 8, seed: int = 0) -> tuple:
    """The tiny golden FashionBERT as a retrieval model with (randomly initialised) dual-encoder heads, and its
    processor: what catalogue search needs, in a second."""
    import warnings

    from transformers import AutoProcessor

    config = FashionBertConfig.from_pretrained(GOLDEN_FASHIONBERT, contrastive_projection_dim=projection_dim)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the heads are new: "newly initialized" is expected
        model = FashionBertForImageTextRetrieval.from_pretrained(GOLDEN_FASHIONBERT, config=config).eval()
    return model, AutoProcessor.from_pretrained(GOLDEN_FASHIONBERT)


def save_golden_fashionbert_with_heads(folder: Path, projection_dim: int = 8, seed: int = 0) -> Path:
    """Writes `golden_fashionbert_with_heads` as a model folder; returns `folder`."""
    model, processor = golden_fashionbert_with_heads(projection_dim, seed)
    save_model_folder(folder, model, processor)
    return folder
