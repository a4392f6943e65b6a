# Copyright 2025 The xmodal authors. Licensed under the Apache License, Version 2.0.
"""Processor for FashionBERT: `FashionBertImageProcessor` + a BERT WordPiece tokenizer in one object.

```python
processor = FashionBertProcessor(FashionBertImageProcessor(), BertTokenizer.from_pretrained(path))
batch = processor(images=[image_a, image_b], text=["red silk dress", "black wool coat"], return_tensors="pt")
# input_ids, token_type_ids, attention_mask: (2, T)   "[CLS] text [SEP]", padded to the longest text
# pixel_values: (2, 3, 256, 256) float32            patch_mask: (2, 64) int64 ones
```

Text defaults (each can be overridden per call): `padding=True` (to the longest text of the call),
`truncation=True`, `max_length=max_text_length`. `max_text_length` defaults to 448, the paper's text budget
(512 positions = 448 text tokens + 64 patches); the released EasyTransfer code used 64 text tokens
(`FashionBertProcessor(..., max_text_length=64)` reproduces it). Text-only calls (`processor(text=...)`) return only
the text fields, image-only calls (`processor(images=...)`) only `pixel_values` and `patch_mask`.

`text` must be a string or a non-empty list of strings; anything else is a `ValueError` naming the item
(`text[2] is NoneType`). An empty or whitespace-only string is valid and encodes as `[CLS] [SEP]` (the dataset loaders
reject such captions as bad rows; the processor leaves that choice to the caller).
"""

from transformers import AutoTokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .image_processing_fashionbert import FashionBertImageProcessor


__all__ = ["FashionBertProcessor"]


class FashionBertProcessor(ProcessorMixin):
    r"""
    Wraps a [`FashionBertImageProcessor`] and a BERT tokenizer (`BertTokenizer`, WordPiece) into a single processor.

    Args:
        image_processor (`FashionBertImageProcessor`):
            Turns images into `pixel_values` and `patch_mask`.
        tokenizer (`PreTrainedTokenizerBase`):
            A BERT WordPiece tokenizer (uncased for the paper and for the packaged MiniLM).
        max_text_length (`int`, *optional*, defaults to 448):
            Default `max_length` of the text, `[CLS]` and `[SEP]` included (paper: 448; released code: 64).
    """

    def __init__(self, image_processor=None, tokenizer=None, max_text_length: int = 448, **kwargs):
        if isinstance(max_text_length, bool) or not isinstance(max_text_length, int) or max_text_length < 2:
            raise ValueError(
                f"`max_text_length` must be an int >= 2 (room for [CLS] and [SEP]), got {max_text_length!r}."
            )
        self.max_text_length = max_text_length
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, images=None, text=None, **kwargs) -> BatchFeature:
        """
        Process `images` (see [`FashionBertImageProcessor`]) and/or `text` (a string or a list of strings).

        Text defaults: `padding=True`, `truncation=True`, `max_length=self.max_text_length`; pass any of them (flat or
        in `text_kwargs`) to override. Returns a `BatchFeature` with `input_ids`, `token_type_ids`, `attention_mask`
        (when text is given) and `pixel_values`, `patch_mask` (when images are given). When both are given, row i
        pairs `images[i]` with `text[i]`, so their counts must match.
        """
        if text is not None:
            _check_text(text)
        if images is not None and text is not None:
            num_texts = 1 if isinstance(text, str) else len(text)
            num_images = _count_images(images)
            if num_texts != num_images:
                raise ValueError(
                    f"got {num_images} image(s) and {num_texts} text(s); pass one text per image (pair i = "
                    "images[i] with text[i]), or call the processor on images and texts separately."
                )
        # Set here rather than as processor-level defaults: ProcessorMixin lets the tokenizer's own saved
        # `max_length` (128 for the packaged MiniLM) override processor-level defaults, which would silently
        # ignore `max_text_length`.
        text_kwargs = kwargs.get("text_kwargs") or {}
        defaults = {"padding": True, "truncation": True, "max_length": self.max_text_length}
        for key, value in defaults.items():
            if key not in kwargs and key not in text_kwargs:
                kwargs[key] = value
        return super().__call__(images=images, text=text, **kwargs)

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        # Load our own image processor class directly, so a saved processor reloads without relying on an
        # AutoImageProcessor registration (plain `from_pretrained`, and remote code, both work).
        image_processor = FashionBertImageProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs)
        return [image_processor, tokenizer]

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "token_type_ids", "attention_mask", "pixel_values", "patch_mask"]


def _check_text(text) -> None:
    """`text` must be a string or a non-empty list/tuple of strings; the error names the offending item."""
    if isinstance(text, str):
        return
    if not isinstance(text, (list, tuple)):
        raise ValueError(f"`text` must be a string or a list of strings, got {type(text).__name__}.")
    if len(text) == 0:
        raise ValueError("`text` is an empty list: pass at least one string.")
    for index, item in enumerate(text):
        if not isinstance(item, str):
            raise ValueError(f"text[{index}] is {type(item).__name__} ({item!r:.40}), not a string.")


def _count_images(images) -> int:
    if isinstance(images, (list, tuple)):
        return len(images)
    shape = getattr(images, "shape", None)
    if shape is not None and len(shape) == 4:  # a batch array or tensor
        return int(shape[0])
    return 1
