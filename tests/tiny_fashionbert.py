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
