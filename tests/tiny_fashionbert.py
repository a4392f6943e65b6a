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
    """Writes `root/fashionbert` and `root/fashionbert_retrieval`; returns the processor and both models."""
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
    return {"root": root, "processor": processor, "pretraining": pretraining, "retrieval": retrieval}


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
