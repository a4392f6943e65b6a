"""A PEFT LoRA fine-tune of FashionBERT saved as an adapter and reloaded onto the saved model.

The bilinear alignment head standardises its two means with BatchNorm, whose running statistics are buffers, not
parameters: a LoRA adapter of the attention carries them only when the pooler is among `modules_to_save` (what the
README and the model card tell PEFT users)."""

import pytest
import torch

from test_fashionbert_modeling import tester
from xmodal import FashionBertForPreTraining

peft = pytest.importorskip("peft")

# What a PEFT user lists (README, model card): the pooler holds the BatchNorm statistics, and the alignment head
# itself is worth training in a fine-tune for matching.
MODULES_TO_SAVE = ["pooler", "seq_relationship"]


def fine_tune(folder, inputs, modules_to_save):
    """A LoRA (query, value) fine-tune of the saved model, a few steps in train mode; returned in eval mode."""
    model = FashionBertForPreTraining.from_pretrained(folder)
    config = peft.LoraConfig(r=4, target_modules=["query", "value"], modules_to_save=modules_to_save)
    tuned = peft.get_peft_model(model, config).train()
    optimizer = torch.optim.AdamW([p for p in tuned.parameters() if p.requires_grad], lr=1e-2)
    torch.manual_seed(0)
    for step in range(8):
        noisy = {**inputs, "pixel_values": inputs["pixel_values"] + step}  # moves the batch statistics
        tuned(**noisy, alignment_labels=torch.tensor([0, 1, 0, 1])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return tuned.eval()


@pytest.fixture()
def saved_model(tmp_path):
    config = tester.config("pixels", alignment_pooling="text_patch_bilinear", contrastive_projection_dim=8)
    torch.manual_seed(0)
    FashionBertForPreTraining(config).eval().save_pretrained(tmp_path / "base")
    tester_inputs = type(tester)()
    tester_inputs.batch_size = 4
    return tmp_path / "base", tester_inputs.inputs(config)


def reload(folder, adapter):
    base = FashionBertForPreTraining.from_pretrained(folder)
    return peft.PeftModel.from_pretrained(base, adapter).eval()


def test_lora_adapter_with_the_pooler_saved_reproduces_the_fine_tuned_outputs(saved_model, tmp_path):
    folder, inputs = saved_model
    tuned = fine_tune(folder, inputs, MODULES_TO_SAVE)
    tuned.save_pretrained(tmp_path / "adapter")
    reloaded = reload(folder, tmp_path / "adapter")
    with torch.no_grad():
        expected, got = tuned(**inputs).tia_logits, reloaded(**inputs).tia_logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    reloaded_norm = reloaded.base_model.model.bert.pooler.modules_to_save["default"].text_norm
    tuned_norm = tuned.base_model.model.bert.pooler.modules_to_save["default"].text_norm
    assert reloaded_norm.running_mean.abs().sum() > 0  # the fine-tune's statistics, not the base model's zeros
    assert torch.equal(reloaded_norm.running_mean, tuned_norm.running_mean)


def test_lora_adapter_without_the_pooler_loses_its_batchnorm_statistics(saved_model, tmp_path):
    folder, inputs = saved_model
    tuned = fine_tune(folder, inputs, None)
    tuned.save_pretrained(tmp_path / "adapter")
    reloaded = reload(folder, tmp_path / "adapter")
    tuned_norm = tuned.base_model.model.bert.pooler.text_norm
    reloaded_norm = reloaded.base_model.model.bert.pooler.text_norm
    assert tuned_norm.running_mean.abs().sum() > 0  # the fine-tune moved them...
    assert torch.equal(reloaded_norm.running_mean, torch.zeros_like(reloaded_norm.running_mean))  # ...the adapter lost them
    with torch.no_grad():
        assert not torch.allclose(tuned(**inputs).tia_logits, reloaded(**inputs).tia_logits)
