"""
transformers' own common model tests (`ModelTesterMixin`) against FashionBERT and MAP-IVR, with tiny testers as
transformers' BERT and ViLT tests have. The mixin's files come from the transformers sdist (see
`transformers_common_tests`). Every mixin test runs (about a minute on two CPU cores for both models); a test is
switched off here only where the model truly lacks the feature, each with its reason:

- MAP-IVR (MLPs over precomputed feature vectors): `has_attentions = False` (every attention test),
  `test_resize_embeddings = False`, and the hidden-state, retain-grad and get/set-embeddings tests.
- FashionBERT: none.

The mixin skips by itself what needs hardware or libraries absent here (GPU, flash attention, deepspeed, kernels),
features neither model has (RoPE, MoE, tensor-parallel plans, fp32-kept modules, weight-conversion mappings), tests
marked slow, and torch.export and `generate` tests (their mixins are stand-ins).
"""

import unittest

import pytest
import torch
from transformers.models.auto import modeling_auto

from transformers_common_tests import CommonTestsUnavailable, load_modeling_common
from xmodal.fashionbert.configuration_fashionbert import FashionBertConfig
from xmodal.fashionbert.modeling_fashionbert import (
    FashionBertForImageTextRetrieval,
    FashionBertForPreTraining,
    FashionBertModel,
)
from xmodal.map_ivr.configuration_map_ivr import MapIvrConfig
from xmodal.map_ivr.modeling_map_ivr import MapIvrModel


try:
    common = load_modeling_common()
except CommonTestsUnavailable as error:
    pytest.skip(f"transformers' common tests are unavailable: {error}", allow_module_level=True)


@pytest.fixture(autouse=True)
def _fashionbert_model_is_a_base_model(monkeypatch):
    """List FashionBertModel among the base models, as BertModel is: the mixin's training tests skip base models."""
    monkeypatch.setitem(modeling_auto.MODEL_MAPPING_NAMES, "fashionbert", "FashionBertModel")


class ModelTester:
    """What the mixin reads from every tester: the test case, the batch size, whether to run training tests."""

    def __init__(self, parent: unittest.TestCase, batch_size: int = 3, is_training: bool = True):
        self.parent = parent
        self.batch_size = batch_size
        self.is_training = is_training


class FashionBertModelTester(ModelTester):
    """Hidden 32, 2 layers, 4 heads; 16x16 images cut 2x2 into 4 patches of 8x8 pixels (192-d pixel features)."""

    def __init__(self, parent: unittest.TestCase, text_length: int = 7):
        super().__init__(parent)
        self.text_length = text_length
        self.vocab_size = 99
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 4
        self.image_size = 16
        self.patch_grid = 2
        # The encoder runs over `[CLS] text [SEP]` followed by the patches.
        self.seq_length = text_length + self.patch_grid**2

    def get_config(self) -> FashionBertConfig:
        return FashionBertConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=37,
            max_position_embeddings=32,
            image_size=self.image_size,
            patch_grid=self.patch_grid,
            patch_encoder_type="pixels",
        )

    def prepare_config_and_inputs_for_common(self) -> tuple[FashionBertConfig, dict]:
        input_ids = common.ids_tensor([self.batch_size, self.text_length], self.vocab_size)
        attention_mask = common.random_attention_mask([self.batch_size, self.text_length])
        pixel_values = common.floats_tensor([self.batch_size, 3, self.image_size, self.image_size])
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}
        return self.get_config(), inputs


class MapIvrModelTester(ModelTester):
    """6-d image features, bags of 4 proposals of 8-d video features, 4-d appearance, 3 classes."""

    def __init__(self, parent: unittest.TestCase):
        super().__init__(parent)
        self.num_proposals = 4
        self.num_labels = 3
        # MAP-IVR has no layer stack: the mixin's layer counts only size-check the config.
        self.num_hidden_layers = 1

    def get_config(self) -> MapIvrConfig:
        return MapIvrConfig(
            image_feature_dim=6,
            video_feature_dim=8,
            appearance_dim=4,
            latent_dim=3,
            encoder_hidden_sizes=[5],
            decoder_hidden_sizes=[7],
            num_labels=self.num_labels,
            proposal_top_k=2,
        )

    def prepare_config_and_inputs_for_common(self) -> tuple[MapIvrConfig, dict]:
        config = self.get_config()
        inputs = {
            "image_features": common.floats_tensor([self.batch_size, config.image_feature_dim]),
            "video_features": common.floats_tensor([self.batch_size, self.num_proposals, config.video_feature_dim]),
            "proposal_scores": common.floats_tensor([self.batch_size, self.num_proposals]),
        }
        return config, inputs


def with_targets(inputs: dict, model_class: type, tester: ModelTester) -> dict:
    """The heads' targets, for the mixin's training tests (its own table knows only transformers' task classes)."""
    batch_size = tester.batch_size
    if model_class is FashionBertForPreTraining:
        labels = torch.full_like(inputs["input_ids"], -100)
        labels[:, 1] = inputs["input_ids"][:, 1]
        mpm_mask = torch.zeros(batch_size, tester.patch_grid**2, dtype=torch.bool)
        mpm_mask[:, 0] = True
        alignment = torch.arange(batch_size) % 2
        return {**inputs, "labels": labels, "mpm_mask": mpm_mask, "alignment_labels": alignment}
    if model_class is FashionBertForImageTextRetrieval:
        return {**inputs, "alignment_labels": torch.arange(batch_size) % 2}
    if model_class is MapIvrModel:
        return {**inputs, "labels": torch.arange(batch_size) % tester.num_labels}
    return inputs


class CommonModelTest(common.ModelTesterMixin):
    """The mixin, with the targets of this project's models added where it asks for labels."""

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs = super()._prepare_for_class(inputs_dict, model_class, return_labels=False)
        return with_targets(inputs, model_class, self.model_tester) if return_labels else inputs


class FashionBertModelTest(CommonModelTest, unittest.TestCase):
    all_model_classes = (FashionBertModel, FashionBertForPreTraining, FashionBertForImageTextRetrieval)
    # The image input, which the attention-implementation tests must pass along with `input_ids`.
    additional_model_inputs = ["pixel_values"]

    def setUp(self):
        self.model_tester = FashionBertModelTester(self)


class MapIvrModelTest(CommonModelTest, unittest.TestCase):
    all_model_classes = (MapIvrModel,)
    # MAP-IVR is made of MLPs over precomputed features: no attention, no hidden-state stack, no token embeddings.
    has_attentions = False
    test_resize_embeddings = False
    additional_model_inputs = ["video_features", "proposal_scores"]

    def setUp(self):
        self.model_tester = MapIvrModelTester(self)

    @unittest.skip(reason="MAP-IVR has no layer stack whose hidden states it could return")
    def test_hidden_states_output(self):
        pass

    @unittest.skip(reason="MAP-IVR has no hidden states or attentions to retain gradients on")
    def test_retain_grad_hidden_states_attentions(self):
        pass

    @unittest.skip(reason="MAP-IVR reads feature vectors: it has no input (token) embeddings")
    def test_model_get_set_embeddings(self):
        pass
