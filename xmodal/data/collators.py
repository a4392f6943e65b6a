# Copyright 2025 The xmodal authors. Licensed under the Apache License, Version 2.0.
"""Data collators.

`FashionBertPretrainingCollator` turns a list of image-text examples into one FashionBERT pretraining batch: text
padding, whole-word MLM masks, MPM patch masks and TIA negatives (paper sec. 3.2).

Why not transformers' `DataCollatorForLanguageModeling(whole_word_mask=True)`: in transformers 5 its whole-word
mode needs an `offset_mapping` from the tokenizer (our examples carry token ids only), turns the 80/10/10 split off
(every selected word becomes `[MASK]`) and draws each word independently with `mlm_probability`, so there is no
per-sequence cap like the released code's 20 predictions. The masking here follows BERT's `create_pretraining_data`
(whole-word variant) instead; its randomness comes from torch, like the transformers collator's.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase


__all__ = ["FashionBertPretrainingCollator", "MapIvrCollator"]


@dataclass
class FashionBertPretrainingCollator:
    r"""
    Collates FashionBERT pretraining examples into a batch for `FashionBertForPreTraining`.

    Each example is a dict with
    - `input_ids`: `[CLS] text [SEP]` token ids (list, array or tensor); optional `attention_mask` (0 = padding,
      never masked) and `token_type_ids` of the same length (zeros when absent);
    - exactly one of `pixel_values` (3, S, S) (the image processor's output for one image) or `patch_features`
      (P, D) (precomputed frozen-encoder features); an optional `patch_mask` (P,) (1 = real patch, default all ones);
    - optional `subcategory` and `product_id` (any hashable value; `None` = unknown).
    Other keys are ignored.

    The batch (the keyword arguments of `FashionBertForPreTraining.forward`) has `B = n + number of negatives` rows: the `n` examples first, in order
    (aligned pairs, `alignment_labels` 0), then the TIA negatives (`alignment_labels` 1), in the order of the
    examples they were built from.
    - `input_ids` (B, T) with MLM masking applied, `attention_mask` (B, T), `token_type_ids` (B, T) and `labels`
      (B, T): the original id at masked positions, -100 elsewhere. T = longest text in the batch, rounded up to
      `pad_to_multiple_of`.
    - `pixel_values` (B, 3, S, S) or `patch_features` (B, P, D) (float64 input becomes float32, other float dtypes
      are kept), `patch_mask` (B, P) int64, `mpm_mask` (B, P) bool (True = patch masked for MPM: the model zeroes
      its input feature and predicts the original).
    - `alignment_labels` (B,) int64, BERT's NSP convention: 0 = aligned, 1 = not aligned.
    - `product_ids` (B,) int64: the product of each row's image, numbered within the batch (an unknown product gets
      a number of its own), so the model never takes two views of one product for each other's negatives.
    - `num_hard_negatives` (0-d int64), only once the hard-negative phase has begun (`hard_negatives`): how many TIA
      negatives per aligned pair the model mines from the batch's contrastive similarities.

    **Whole-word masking (MLM).** A word is a token plus the `##` WordPiece pieces that follow it; special tokens
    (`tokenizer.all_special_ids`: [CLS], [SEP], [PAD], [UNK], [MASK]) and padding are never masked. Per row, with
    `n` maskable tokens, the target count is `k = floor(n * mlm_probability + u)`, `u ~ U(0, 1)` (stochastic
    rounding, so the expected masked fraction is `mlm_probability` even for short captions, where BERT's
    `round(n * p)` is biased), at least 1, at most `max_predictions`. Words are visited in random order and a word is
    taken whole when it still fits into `k` (BERT's `create_pretraining_data`); words are never split. **Every row
    with a maskable token gets at least one masked word** (when `mlm_probability > 0`), as in BERT and the released
    code, so every aligned row contributes to the MLM loss and a batch never has an empty MLM loss; if the randomly
    visited words were all too long for `k`, the first word that fits `max_predictions` is taken. Each selected
    token independently becomes `[MASK]` with probability `mask_replace_prob` (0.8), a random non-special token of
    the vocabulary with probability `random_replace_prob` (0.1), and stays unchanged otherwise (0.1); the choice is
    per token, as in BERT's script, so the pieces of one word may be replaced differently, but all of them are
    predicted. The at-least-one rule raises the rate for captions shorter than about `1 / mlm_probability`
    maskable tokens (measured at 0.15: 3-19 word captions 15.1%, 1-5 word captions about 25%); Fashion-Gen
    descriptions are far longer.

    **Patch masking (MPM).** Per row, `floor(P_real * mpm_probability + u)` of the real patches (`patch_mask == 1`),
    at least one when `mpm_probability > 0`, chosen uniformly without replacement.

    **TIA negatives.** For every example, `negatives_per_example` extra rows pair its text (and token types) with
    the image of another example of the batch: first from examples of the same `subcategory` and a different
    `product_id`, in random order, then topped up from any example of a different product (the official README's
    same-sub-category negatives; the paper's random negatives are the fallback). A negative never shows the same
    product. An example whose `product_id` is `None` counts as its own product. When the batch holds fewer other
    products than `negatives_per_example`, the example gets fewer negatives, and **none when every example of the
    batch is the same product** (e.g. a batch of one): build batches with several products (a sampler that mixes
    products) to get TIA signal. Negative rows are masked exactly like aligned rows (MLM and MPM, independent draws)
    so the TIA head cannot tell them apart by their masks; their `labels`/`mpm_mask` describe that masking, and the
    model counts MLM and MPM only on rows with `alignment_labels == 0`.

    **Hard negatives (ALBEF).** With `hard_negatives = k > 0`, from batch `hard_negatives_from_batch` on (counted by
    `batches_collated`) the collator adds no negatives of its own and asks the model for `k` mined ones per aligned
    pair (`num_hard_negatives`, see `FashionBertForPreTraining.forward`; the model needs dual-encoder heads): the
    batch's most similar non-matching partners by the contrastive task, sampled as ALBEF does. Before that batch,
    while the contrastive similarities carry no information yet, the negatives are the collator's own, as above.

    **Randomness.** All draws use `generator` when given, else torch's global RNG. The global RNG (the default) is
    what `accelerate`'s `set_seed` seeds and what its checkpoints save and restore, so masks are reproducible and a
    resumed run draws exactly the masks an uninterrupted run would. With `DataLoader(num_workers > 0)` keep the
    default: every worker would get its own copy of a passed generator and repeat the same masks, while torch seeds
    each worker's global RNG differently. Draw order per call: negatives (example by example; under a curriculum, one uniform draw per example first), then MLM masks (row
    by row), then MPM masks (row by row).

    Args:
        tokenizer (`PreTrainedTokenizerBase`):
            The BERT WordPiece tokenizer the `input_ids` come from (`mask_token`, `pad_token`, special ids, vocab).
        mlm_probability (`float`, *optional*, defaults to 0.15):
            Fraction of maskable tokens selected for MLM (whole words). 0 disables MLM masking.
        mask_replace_prob (`float`, *optional*, defaults to 0.8):
            Probability that a selected token is replaced by `[MASK]`.
        random_replace_prob (`float`, *optional*, defaults to 0.1):
            Probability that a selected token is replaced by a random non-special token; the rest stay unchanged.
        max_predictions (`int`, *optional*):
            Cap on masked tokens per row (the released code: 20). `None` = no cap.
        mpm_probability (`float`, *optional*, defaults to 0.10):
            Fraction of real patches masked for MPM. 0 disables MPM masking.
        negative_curriculum_batches (`int`, *optional*, defaults to 0):
            Batches over which the share of same-sub-category negatives rises from 0 to 1 (0 = same sub-category from
            the start). The position in the curriculum is `batches_collated`, the number of batches built so far: set
            it when resuming (train.py does), and keep the default `DataLoader(num_workers=0)`, since workers would
            each count their own batches.
        unmasked_batches (`int`, *optional*, defaults to 0):
            The first this many batches (counted by `batches_collated`) get no MLM and no MPM masks (`labels` all
            -100, `mpm_mask` all False): train.py sets it to the alignment warm-up, during which neither task is
            trained, so masking would only hide the words and patches the alignment task needs.
        negatives_per_example (`int`, *optional*, defaults to 1):
            TIA negative rows added per example (0 = aligned rows only).
        hard_negatives (`int`, *optional*, defaults to 0):
            TIA negatives per aligned pair the model mines by contrastive similarity once the hard-negative phase has
            begun (0 = never: the collator's negatives throughout).
        hard_negatives_from_batch (`int`, *optional*, defaults to 0):
            The first batch (counted by `batches_collated`) of the hard-negative phase.
        patch_grid (`int`, *optional*, defaults to 8):
            Patches per side; every example must have `patch_grid ** 2` patches. Must match the model config.
        pad_to_multiple_of (`int`, *optional*):
            Pad the text length up to a multiple of this value.
        generator (`torch.Generator`, *optional*):
            Source of randomness (CPU generator); `None` = torch's global RNG.
    """

    tokenizer: PreTrainedTokenizerBase
    mlm_probability: float = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    max_predictions: int | None = None
    mpm_probability: float = 0.10
    negatives_per_example: int = 1
    hard_negatives: int = 0
    hard_negatives_from_batch: int = 0
    negative_curriculum_batches: int = 0
    unmasked_batches: int = 0
    batches_collated: int = 0
    patch_grid: int = 8
    pad_to_multiple_of: int | None = None
    generator: torch.Generator | None = None
    _is_continuation: torch.Tensor = field(init=False, repr=False, compare=False)
    _special_ids: set = field(init=False, repr=False, compare=False)
    _replacement_ids: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("mlm_probability", "mask_replace_prob", "random_replace_prob", "mpm_probability"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}.")
        if self.mask_replace_prob + self.random_replace_prob > 1.0 + 1e-12:
            raise ValueError(
                f"`mask_replace_prob` + `random_replace_prob` must not exceed 1, got "
                f"{self.mask_replace_prob} + {self.random_replace_prob}."
            )
        for name, minimum, optional in (
            ("max_predictions", 1, True),
            ("negatives_per_example", 0, False),
            ("hard_negatives", 0, False),
            ("hard_negatives_from_batch", 0, False),
            ("negative_curriculum_batches", 0, False),
            ("unmasked_batches", 0, False),
            ("batches_collated", 0, False),
            ("patch_grid", 1, False),
            ("pad_to_multiple_of", 1, True),
        ):
            value = getattr(self, name)
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                allowed = f"an int >= {minimum}" + (" or None" if optional else "")
                raise ValueError(f"`{name}` must be {allowed}, got {value!r}.")
        if self.generator is not None and not isinstance(self.generator, torch.Generator):
            raise ValueError(f"`generator` must be a torch.Generator or None, got {type(self.generator).__name__}.")
        if self.tokenizer.mask_token_id is None:
            raise ValueError("`tokenizer` has no mask token; MLM needs one ([MASK]).")
        if self.tokenizer.pad_token_id is None:
            raise ValueError("`tokenizer` has no pad token; padding needs one ([PAD]).")

        vocab_size = len(self.tokenizer)
        is_continuation = torch.zeros(vocab_size, dtype=torch.bool)
        for token, index in self.tokenizer.get_vocab().items():
            if index < vocab_size and token.startswith("##"):
                is_continuation[index] = True
        self._is_continuation = is_continuation
        self._special_ids = set(self.tokenizer.all_special_ids)
        replacement = torch.ones(vocab_size, dtype=torch.bool)
        replacement[sorted(i for i in self._special_ids if 0 <= i < vocab_size)] = False
        self._replacement_ids = torch.nonzero(replacement).flatten()

    # ------------------------------------------------------------------ entry point

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if isinstance(examples, dict) or len(examples) == 0:
            raise ValueError("`examples` must be a non-empty list of dicts.")
        parsed = [self._read_example(index, example) for index, example in enumerate(examples)]
        image_key = parsed[0]["image_key"]
        for index, example in enumerate(parsed):
            if example["image_key"] != image_key:
                raise ValueError(
                    f"examples[{index}] has `{example['image_key']}` but examples[0] has `{image_key}`; a batch "
                    "must use one of them throughout."
                )
        self._check_same_image_shape(parsed, image_key)

        mining = self.hard_negatives > 0 and self.batches_collated >= self.hard_negatives_from_batch
        product_ids = [example["product_id"] for example in parsed]
        negatives = [] if mining else self.sample_negatives([example["subcategory"] for example in parsed], product_ids)
        unmasked = self.batches_collated < self.unmasked_batches
        self.batches_collated += 1
        rows = [(index, index) for index in range(len(parsed))] + negatives  # (text example, image example)

        batch = self._collate_text([parsed[text] for text, _ in rows])
        maskable = batch.pop("maskable")
        if unmasked:
            batch["labels"] = torch.full_like(batch["input_ids"], -100)
        else:
            batch["input_ids"], batch["labels"] = self._mask_text_batch(batch["input_ids"], maskable)

        images = [parsed[image]["image"] for _, image in rows]
        batch[image_key] = torch.stack(_common_float_dtype(images))
        batch["patch_mask"] = torch.stack([parsed[image]["patch_mask"] for _, image in rows])
        if unmasked:
            batch["mpm_mask"] = torch.zeros(batch["patch_mask"].shape, dtype=torch.bool)
        else:
            batch["mpm_mask"] = torch.stack([self._mask_patches(mask) for mask in batch["patch_mask"]])
        batch["alignment_labels"] = torch.tensor([0] * len(parsed) + [1] * len(negatives), dtype=torch.long)
        numbers = _product_numbers(product_ids)
        batch["product_ids"] = torch.tensor([numbers[image] for _, image in rows], dtype=torch.long)
        if mining:
            batch["num_hard_negatives"] = torch.tensor(self.hard_negatives)
        return batch

    # ------------------------------------------------------------------ TIA negatives

    def sample_negatives(
        self, subcategories: Sequence[Any], product_ids: Sequence[Any]
    ) -> list[tuple[int, int]]:
        """
        Pick the TIA negatives for one batch: a list of `(text_index, image_index)` pairs, `negatives_per_example`
        per example at most, grouped by `text_index` in increasing order. Same sub-category and different product
        first (random order), then any different product (random order); never the same product. Examples whose
        product id is `None` count as their own product; `None` sub-categories match nothing.
        """
        if len(subcategories) != len(product_ids):
            raise ValueError(
                f"got {len(subcategories)} subcategories but {len(product_ids)} product ids; they must pair up."
            )
        products = [_plain(pid) if pid is not None else ("<unknown product>", i) for i, pid in enumerate(product_ids)]
        subcategories = [_plain(sub) for sub in subcategories]
        pairs = []
        if self.negatives_per_example == 0:
            return pairs
        for anchor in range(len(products)):
            others = [j for j in range(len(products)) if products[j] != products[anchor]]
            if not others:
                continue
            if self.negative_curriculum_batches and self._rand(1).item() >= self.same_subcategory_share:
                pairs.extend((anchor, others[i]) for i in self._randperm(len(others))[: self.negatives_per_example])
                continue
            subcategory = subcategories[anchor]
            same = [j for j in others if subcategory is not None and subcategories[j] == subcategory]
            same_set = set(same)
            rest = [j for j in others if j not in same_set]
            ordered = [same[i] for i in self._randperm(len(same))] + [rest[i] for i in self._randperm(len(rest))]
            pairs.extend((anchor, image) for image in ordered[: self.negatives_per_example])
        return pairs

    @property
    def same_subcategory_share(self) -> float:
        """Probability that the next batch's examples look for same-sub-category negatives first."""
        if not self.negative_curriculum_batches:
            return 1.0
        return min(1.0, self.batches_collated / self.negative_curriculum_batches)

    # ------------------------------------------------------------------ text

    def _collate_text(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(example["input_ids"]) for example in examples)
        if self.pad_to_multiple_of is not None:
            length = math.ceil(length / self.pad_to_multiple_of) * self.pad_to_multiple_of
        rows = len(examples)
        input_ids = torch.full((rows, length), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((rows, length), dtype=torch.long)
        token_type_ids = torch.zeros((rows, length), dtype=torch.long)
        for row, example in enumerate(examples):
            size = len(example["input_ids"])
            input_ids[row, :size] = example["input_ids"]
            attention_mask[row, :size] = example["attention_mask"]
            token_type_ids[row, :size] = example["token_type_ids"]
        special = torch.tensor(sorted(self._special_ids), dtype=torch.long)
        maskable = attention_mask.bool() & ~torch.isin(input_ids, special)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "maskable": maskable,
        }

    def _mask_text_batch(self, input_ids: torch.Tensor, maskable: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        masked_ids = input_ids.clone()
        labels = torch.full_like(input_ids, -100)
        for row in range(input_ids.shape[0]):
            positions = self._select_whole_words(input_ids[row], maskable[row])
            if positions.numel() == 0:
                continue
            labels[row, positions] = input_ids[row, positions]
            masked_ids[row, positions] = self._replace_tokens(input_ids[row, positions])
        return masked_ids, labels

    def _words(self, ids: torch.Tensor, maskable: torch.Tensor) -> list[list[int]]:
        """Whole words as lists of positions: a maskable token plus the maskable `##` pieces right after it."""
        words: list[list[int]] = []
        continuation = self._is_continuation[ids].tolist()
        maskable = maskable.tolist()
        for position, (can_mask, is_piece) in enumerate(zip(maskable, continuation)):
            if not can_mask:
                continue
            if is_piece and words and position > 0 and maskable[position - 1] and words[-1][-1] == position - 1:
                words[-1].append(position)
            else:
                words.append([position])
        return words

    def _select_whole_words(self, ids: torch.Tensor, maskable: torch.Tensor) -> torch.Tensor:
        words = self._words(ids, maskable)
        if not words or self.mlm_probability == 0:
            return torch.empty(0, dtype=torch.long)
        num_maskable = sum(len(word) for word in words)
        cap = self.max_predictions if self.max_predictions is not None else num_maskable
        target = math.floor(num_maskable * self.mlm_probability + self._rand(1).item())  # stochastic rounding
        target = min(max(target, 1), cap)
        order = self._randperm(len(words))
        chosen: list[int] = []
        for index in order:
            if len(chosen) >= target:
                break
            if len(chosen) + len(words[index]) <= target:
                chosen.extend(words[index])
        if not chosen:  # every visited word was longer than the target: take the first that fits the cap
            for index in order:
                if len(words[index]) <= cap:
                    chosen = list(words[index])
                    break
        return torch.tensor(sorted(chosen), dtype=torch.long)

    def _replace_tokens(self, original: torch.Tensor) -> torch.Tensor:
        """80% [MASK], 10% random non-special token, 10% unchanged (per token)."""
        draw = self._rand(original.numel())
        replaced = original.clone()
        to_mask = draw < self.mask_replace_prob
        to_random = (draw >= self.mask_replace_prob) & (draw < self.mask_replace_prob + self.random_replace_prob)
        replaced[to_mask] = self.tokenizer.mask_token_id
        num_random = int(to_random.sum())
        if num_random:
            picks = torch.randint(len(self._replacement_ids), (num_random,), generator=self.generator)
            replaced[to_random] = self._replacement_ids[picks]
        return replaced

    # ------------------------------------------------------------------ patches

    def _mask_patches(self, patch_mask: torch.Tensor) -> torch.Tensor:
        mpm_mask = torch.zeros(patch_mask.shape, dtype=torch.bool)
        real = torch.nonzero(patch_mask.bool()).flatten()
        if real.numel() == 0 or self.mpm_probability == 0:
            return mpm_mask
        count = math.floor(real.numel() * self.mpm_probability + self._rand(1).item())
        count = min(max(count, 1), real.numel())
        mpm_mask[real[self._randperm(real.numel())[:count]]] = True
        return mpm_mask

    # ------------------------------------------------------------------ examples

    def _read_example(self, index: int, example: Any) -> dict[str, Any]:
        where = f"examples[{index}]"
        if not isinstance(example, dict):
            try:
                example = dict(example)
            except (TypeError, ValueError):
                raise ValueError(f"{where} must be a dict, got {type(example).__name__}.") from None
        if "input_ids" not in example:
            raise ValueError(f"{where} has no `input_ids`.")
        input_ids = _integer_vector(example["input_ids"], f"{where}['input_ids']")
        if input_ids.numel() == 0:
            raise ValueError(f"{where}['input_ids'] is empty; expected [CLS] text [SEP].")
        vocab_size = len(self.tokenizer)
        if input_ids.min() < 0 or input_ids.max() >= vocab_size:
            raise ValueError(
                f"{where}['input_ids'] has ids outside [0, {vocab_size}) (the tokenizer's vocabulary): "
                f"min {int(input_ids.min())}, max {int(input_ids.max())}."
            )
        parsed = {"input_ids": input_ids}
        for key, default in (("attention_mask", 1), ("token_type_ids", 0)):
            if example.get(key) is None:
                parsed[key] = torch.full_like(input_ids, default)
                continue
            values = _integer_vector(example[key], f"{where}['{key}']")
            if values.shape != input_ids.shape:
                raise ValueError(
                    f"{where}['{key}'] has length {values.numel()} but input_ids has length {input_ids.numel()}."
                )
            parsed[key] = values
        if not torch.isin(parsed["attention_mask"], torch.tensor([0, 1])).all():
            raise ValueError(f"{where}['attention_mask'] must hold only 0 and 1.")

        has_pixels = example.get("pixel_values") is not None
        has_features = example.get("patch_features") is not None
        if has_pixels == has_features:
            raise ValueError(
                f"{where} must have exactly one of `pixel_values` (3, S, S) and `patch_features` (P, D); "
                f"it has {'both' if has_pixels else 'neither'}."
            )
        image_key = "pixel_values" if has_pixels else "patch_features"
        image = _float_tensor(example[image_key], f"{where}['{image_key}']")
        num_patches = self.patch_grid**2
        if has_pixels:
            if image.ndim != 3 or image.shape[0] != 3 or image.shape[1] != image.shape[2]:
                raise ValueError(f"{where}['pixel_values'] has shape {tuple(image.shape)}; expected (3, S, S).")
            if image.shape[1] % self.patch_grid != 0:
                raise ValueError(
                    f"{where}['pixel_values'] is {image.shape[1]} pixels wide, not divisible by patch_grid="
                    f"{self.patch_grid}."
                )
        elif image.ndim != 2 or image.shape[0] != num_patches:
            raise ValueError(
                f"{where}['patch_features'] has shape {tuple(image.shape)}; expected ({num_patches}, D) "
                f"(patch_grid={self.patch_grid})."
            )
        if not torch.isfinite(image).all():
            raise ValueError(f"{where}['{image_key}'] contains NaN or infinite values.")

        if example.get("patch_mask") is None:
            patch_mask = torch.ones(num_patches, dtype=torch.long)
        else:
            patch_mask = _integer_vector(example["patch_mask"], f"{where}['patch_mask']")
            if patch_mask.numel() != num_patches:
                raise ValueError(
                    f"{where}['patch_mask'] has {patch_mask.numel()} entries; expected {num_patches} "
                    f"(patch_grid={self.patch_grid})."
                )
            if not torch.isin(patch_mask, torch.tensor([0, 1])).all():
                raise ValueError(f"{where}['patch_mask'] must hold only 0 and 1.")

        parsed.update(
            image=image,
            image_key=image_key,
            patch_mask=patch_mask,
            subcategory=example.get("subcategory"),
            product_id=example.get("product_id"),
        )
        return parsed

    @staticmethod
    def _check_same_image_shape(parsed: list[dict[str, Any]], image_key: str) -> None:
        shape = parsed[0]["image"].shape
        for index, example in enumerate(parsed):
            if example["image"].shape != shape:
                raise ValueError(
                    f"examples[{index}]['{image_key}'] has shape {tuple(example['image'].shape)} but examples[0]'s "
                    f"is {tuple(shape)}; all examples of a batch must match."
                )

    # ------------------------------------------------------------------ randomness

    def _rand(self, size: int) -> torch.Tensor:
        return torch.rand(size, generator=self.generator)

    def _randperm(self, size: int) -> list[int]:
        return torch.randperm(size, generator=self.generator).tolist()


def _product_numbers(product_ids: Sequence[Any]) -> list[int]:
    """Each example's product as a number (in order of first appearance); an unknown product (None) is its own."""
    numbers: dict = {}
    out = []
    for index, pid in enumerate(product_ids):
        key = ("<unknown product>", index) if pid is None else _plain(pid)
        out.append(numbers.setdefault(key, len(numbers)))
    return out


def _plain(value: Any) -> Any:
    """A hashable, comparable Python value for ids that arrive as numpy/torch scalars."""
    if isinstance(value, (np.generic, torch.Tensor)) and getattr(value, "ndim", 0) == 0:
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def _integer_vector(value: Any, where: str) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{where} is not a list of integers: {error}") from None
    if tensor.ndim != 1:
        raise ValueError(f"{where} must be 1-D, got shape {tuple(tensor.shape)}.")
    if tensor.numel() and (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool):
        raise ValueError(f"{where} must hold integers, got dtype {tensor.dtype}.")
    return tensor.to(torch.long)


def _float_tensor(value: Any, where: str) -> torch.Tensor:
    try:
        tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{where} is not a numeric array: {error}") from None
    if not tensor.is_floating_point():
        raise ValueError(f"{where} must be floating point, got dtype {tensor.dtype}.")
    return tensor.detach().cpu()


def _common_float_dtype(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Keep one shared float dtype (float16/bfloat16/float32 kept when all agree); float64 becomes float32."""
    dtypes = {tensor.dtype for tensor in tensors}
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    if dtype == torch.float64:
        dtype = torch.float32
    return [tensor.to(dtype) for tensor in tensors]


@dataclass
class MapIvrCollator:
    r"""
    Collates MAP-IVR rows `{image_features, video_features, proposal_scores?, proposal_mask?, label}` into a batch
    for `MapIvrModel`, through a fitted `MapIvrFeatureExtractor` (bag padding, masks, APIVR normalisation).
    """

    feature_extractor: Any

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if len(rows) == 0:
            raise ValueError("`rows` must be a non-empty list of dicts.")
        optional = {
            name: [row[name] for row in rows] for name in ("proposal_scores", "proposal_mask") if rows[0].get(name) is not None
        }
        batch = self.feature_extractor(
            image_features=[row["image_features"] for row in rows],
            video_features=[row["video_features"] for row in rows],
            labels=[row["label"] for row in rows],
            return_tensors="pt",
            **optional,
        )
        return dict(batch)
