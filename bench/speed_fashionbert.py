"""FashionBERT training throughput (forward + backward) next to a plain BERT and ViLT of the same size.

Three encoders of the same width and depth (MiniLM-L6-H384 by default) get one training step (forward, a scalar loss
on the last hidden state, backward) on the same batch shape:

- FashionBERT: `FashionBertModel` with the "pixels" patch encoder, `text_length` text tokens plus 64 precomputed
  patch features (`patch_features`, so no CNN runs: only the transformer is timed).
- BERT: transformers' `BertModel` with the same config, `input_ids` of the same total length (text + 64).
- ViLT: transformers' `ViltModel` with hidden/layers/heads/intermediate matched, `text_length` tokens and an image
  of `8 * patch_size` pixels (8x8 = 64 patches, plus ViLT's image [CLS] token).

The models are timed in turns (A, B, C, A, B, C, ...) in one process, so machine noise hits them alike; the figures
are medians over `--repeats` rounds. Goal (issue 7): FashionBERT >= 0.95x BERT, and faster than ViLT.

    python bench/speed_fashionbert.py            # writes bench/results/speed_fashionbert.json
    python bench/speed_fashionbert.py --quick    # a few seconds
"""

import statistics
import time

import torch
from transformers import BertConfig, BertModel, ViltConfig, ViltModel

from xmodal.benchmarking import add_speed_arguments, bench_parser, run_environment, start_speed_run, write_json
from xmodal.fashionbert import FashionBertConfig, FashionBertModel


NUM_PATCHES = 64  # 8x8 grid, the paper's


def train_step(model: torch.nn.Module, inputs: dict) -> None:
    """One forward + backward (loss = mean of the last hidden state), gradients cleared afterwards."""
    output = model(**inputs, return_dict=True)
    output.last_hidden_state.float().mean().backward()
    model.zero_grad(set_to_none=True)


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--hidden_size", type=int, default=384)
    parser.add_argument("--num_hidden_layers", type=int, default=6)
    parser.add_argument("--num_attention_heads", type=int, default=12)
    parser.add_argument("--intermediate_size", type=int, default=1536)
    parser.add_argument("--text_length", type=int, default=32, help="Text tokens ([CLS] and [SEP] included).")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="Timed rounds (each model once per round).")
    parser.add_argument("--steps", type=int, default=2, help="Training steps per timed measurement.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps per model first.")
    parser.add_argument("--attn_implementation", default="sdpa", choices=["sdpa", "eager"],
                        help="Attention of FashionBERT and BERT (transformers' ViLT has eager attention only).")
    add_speed_arguments(parser, "speed_fashionbert", quick_help="Tiny run (seconds): hidden 64, 2 layers, batch 4.")
    args = parser.parse_args()
    if args.quick:
        args.hidden_size, args.num_attention_heads, args.intermediate_size = 64, 4, 256
        args.num_hidden_layers, args.batch_size, args.repeats, args.steps, args.warmup = 2, 4, 3, 1, 1
    load_before = start_speed_run(args)

    sizes = dict(
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads,
        intermediate_size=args.intermediate_size,
    )
    total_length = args.text_length + NUM_PATCHES
    batch, text = args.batch_size, args.text_length
    fashionbert = FashionBertModel(FashionBertConfig(patch_encoder_type="pixels", **sizes))
    bert = BertModel(BertConfig(max_position_embeddings=max(512, total_length), **sizes))
    patch_size = 32
    vilt = ViltModel(
        ViltConfig(image_size=8 * patch_size, patch_size=patch_size, max_position_embeddings=max(40, text), **sizes)
    )
    input_ids = torch.randint(1000, 30000, (batch, text))
    attention_mask = torch.ones(batch, text, dtype=torch.long)
    inputs = {
        "fashionbert": (
            fashionbert,
            {
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "patch_features": torch.randn(batch, NUM_PATCHES, fashionbert.config.patch_feature_dim),
            },
        ),
        "bert": (
            bert,
            {
                "input_ids": torch.randint(1000, 30000, (batch, total_length)),
                "attention_mask": torch.ones(batch, total_length, dtype=torch.long),
            },
        ),
        "vilt": (
            vilt,
            {
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "pixel_values": torch.randn(batch, 3, 8 * patch_size, 8 * patch_size),
                "pixel_mask": torch.ones(batch, 8 * patch_size, 8 * patch_size, dtype=torch.long),
            },
        ),
    }
    fashionbert.set_attn_implementation(args.attn_implementation)
    bert.set_attn_implementation(args.attn_implementation)
    sequence_lengths = {"fashionbert": total_length, "bert": total_length, "vilt": text + NUM_PATCHES + 1}
    for model, model_inputs in inputs.values():
        model.train()
        for _ in range(args.warmup):
            train_step(model, model_inputs)

    seconds = {name: [] for name in inputs}
    for _ in range(args.repeats):
        for name, (model, model_inputs) in inputs.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                train_step(model, model_inputs)
            seconds[name].append((time.perf_counter() - start) / args.steps)

    models = {}
    for name, (model, _) in inputs.items():
        step = statistics.median(seconds[name])
        models[name] = {
            "seconds_per_step_median": step,
            "seconds_per_step_all": seconds[name],
            "pairs_per_second": batch / step,
            "tokens_per_second": batch * sequence_lengths[name] / step,
            "sequence_length": sequence_lengths[name],
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "attn_implementation": model.config._attn_implementation,
        }
    # Ratios per round (same round = same machine state), then their median.
    ratio_bert = statistics.median(b / f for f, b in zip(seconds["fashionbert"], seconds["bert"]))
    ratio_vilt = statistics.median(v / f for f, v in zip(seconds["fashionbert"], seconds["vilt"]))
    result = {
        "config": {**sizes, "text_length": text, "num_patches": NUM_PATCHES, "batch_size": batch, "attn_implementation": args.attn_implementation,
                   "repeats": args.repeats, "steps_per_measurement": args.steps, "quick": args.quick},
        "models": models,
        "ratio_fashionbert_over_bert_pairs_per_second": ratio_bert,
        "ratio_fashionbert_over_vilt_pairs_per_second": ratio_vilt,
        "goal": "FashionBERT >= 0.95x BERT pairs/s and > 1x ViLT pairs/s",
        "goal_met": {"vs_bert": ratio_bert >= 0.95, "vs_vilt": ratio_vilt > 1.0},
        "environment": run_environment(load_before),
    }
    write_json(args.output, result)
    print(f"forward+backward, batch {batch}, hidden {args.hidden_size}, {args.num_hidden_layers} layers:")
    print(f"{'model':<12} {'seq':>4} {'s/step':>8} {'pairs/s':>9} {'tokens/s':>10}")
    for name, row in models.items():
        print(f"{name:<12} {row['sequence_length']:>4} {row['seconds_per_step_median']:8.4f} "
              f"{row['pairs_per_second']:9.1f} {row['tokens_per_second']:10.0f}")
    print(f"FashionBERT / BERT pairs/s: {ratio_bert:.3f} (goal >= 0.95)   FashionBERT / ViLT: {ratio_vilt:.3f} (goal > 1)")


if __name__ == "__main__":
    main()
