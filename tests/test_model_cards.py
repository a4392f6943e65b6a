"""The model cards a user reads on the Hub: results (Rank@K, matching accuracy/AUC, mAP@K), base model, figures."""

import re

import pytest
from huggingface_hub import ModelCard

from xmodal.hub import build_model_card

FASHION_METRICS = {
    "image_to_text/R@1": 27.5, "image_to_text/R@5": 61.25, "image_to_text/R@10": 78.0,
    "text_to_image/R@1": 30.125, "text_to_image/R@5": 64.0, "text_to_image/R@10": 80.5,
    "tia/accuracy": 84.3125, "tia/auc": 0.912345,
}  # fmt: skip
MAP_IVR_METRICS = {f"{s}/mAP@{k}": round(0.1 * (i + 1) + k / 1000, 6) for i, s in enumerate(("s_a", "s_v", "s_all")) for k in (10, 20, 50, 100)}
FIGURES = [
    {"file": "retrieval_text_to_image.png", "caption": "text → image: top 5 of 100 evaluation products"},
    {"file": "alignment_loss.png", "caption": "alignment loss during training"},
    {"file": "task_weights.png", "caption": "task weights (MLM, MPM, TIA) during training"},
    {"file": "losses.png", "caption": "training losses"},
]


def card(model_type, metrics, **overrides) -> ModelCard:
    fields = dict(
        model_name="tiny", repo_id="user/tiny", dataset_name="xmodal synthetic", dataset_description="xmodal synthetic (55 products)",
        base_model=None, command="python train.py", hyperparameters={"learning rate": 2e-4, "Adam betas": (0.95, 0.999)},
        limitations="Synthetic data only.", results_note="1 draw.",
    )  # fmt: skip
    if model_type == "fashionbert":
        fields.update(patch_encoder="pixels", task_weighting="adaptive", mpm_kl_direction="forward", alignment_pooling="cls")
    else:
        fields.update(feature_description="xmodal's transparent descriptor")
    fields.update(overrides)
    return build_model_card(model_type, metrics, **fields)


def test_fashionbert_card_shows_rank_at_k_matching_accuracy_and_auc():
    text = card("fashionbert", FASHION_METRICS).content
    assert "| image → text | 27.50 | 61.25 | 78.00 |" in text
    assert "| text → image | 30.12 | 64.00 | 80.50 |" in text
    assert "| accuracy (%), cross-encoder | 84.31 |" in text and "| ROC AUC, cross-encoder | 0.9123 |" in text
    # A model without dual-encoder heads has one score, the paper's, and no fusion to describe.
    assert "| cross-encoder (paper) | image → text | 27.50 |" in text and "it is the only score of this model" in text
    data = ModelCard(text).data
    assert {m.metric_type: m.metric_value for m in data.eval_results} == FASHION_METRICS
    # Without matching metrics there is no matching table; without any results the card says so.
    no_matching = card("fashionbert", {k: v for k, v in FASHION_METRICS.items() if not k.startswith("tia/")}).content
    assert "ROC AUC" not in no_matching and "| image → text |" in no_matching
    assert "Retrieval was not evaluated in this run." in card("fashionbert", {}).content


def test_base_model_is_named_in_the_text_and_the_metadata():
    base = "sentence-transformers/all-MiniLM-L6-v2"
    text = card("fashionbert", FASHION_METRICS, base_model=base).content
    assert ModelCard(text).data.base_model == base
    assert re.search(rf"^base_model: {re.escape(base)}$", text, flags=re.M)
    assert f"[`{base}`](https://huggingface.co/{base})" in text
    without = card("fashionbert", FASHION_METRICS, base_model=None).content
    assert ModelCard(without).data.base_model is None and "base_model" not in without
    assert "Base text model: none from the Hub" in without
    for text in (without, card("map_ivr", MAP_IVR_METRICS).content):
        assert "None" not in text  # a missing value never shows as Python's None


@pytest.mark.parametrize("model_type, metrics", [("fashionbert", FASHION_METRICS), ("map_ivr", MAP_IVR_METRICS)])
def test_every_figure_passed_is_shown_with_its_caption(model_type, metrics):
    text = card(model_type, metrics, figures=FIGURES + [{"file": "extra_plot.png"}]).content
    positions = []
    for figure in FIGURES:
        assert f"![{figure['caption']}]({figure['file']})" in text
        assert f"*{figure['caption']}*" in text
        positions.append(text.index(f"]({figure['file']})"))
    assert positions == sorted(positions)  # in the order given
    assert "![extra_plot](extra_plot.png)" in text  # the caption defaults to the file name
    assert "### Figures" not in card(model_type, metrics).content
    with pytest.raises(ValueError, match="needs a 'file'"):
        card(model_type, metrics, figures=[{"caption": "no file"}])


def test_map_ivr_card_reads_well_with_real_values():
    text = card("map_ivr", MAP_IVR_METRICS, results_note="h = 20, λ_v = 0.5.", base_model="owner/pretrained-map-ivr").content
    assert "| S_A | 0.1100 | 0.1200 | 0.1500 | 0.2000 |" in text
    assert "| S_V | 0.2100 | 0.2200 | 0.2500 | 0.3000 |" in text
    assert "| S_all | 0.3100 | 0.3200 | 0.3500 | 0.4000 |" in text
    assert "h = 20, λ_v = 0.5." in text and 'from_pretrained("user/tiny", trust_remote_code=True)' in text
    assert "- Base model: [`owner/pretrained-map-ivr`](https://huggingface.co/owner/pretrained-map-ivr)" in text
    assert "| learning rate | 0.0002 |" in text and "- Features: xmodal's transparent descriptor" in text
    data = ModelCard(text).data
    assert data.base_model == "owner/pretrained-map-ivr"
    assert {m.metric_type: m.metric_value for m in data.eval_results} == MAP_IVR_METRICS
    assert "Not evaluated in this run." in card("map_ivr", {}).content
    assert "\n\n\n\n" not in text  # no runs of empty lines where optional parts are left out
