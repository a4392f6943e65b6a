"""Speed of FashionBERT's retrieval protocol: `evaluate_fashion_retrieval` (patch features cached once per image,
pairs batched) vs a naive per-pair loop (one forward per pair, the image's patch features recomputed each time).

The model is a `FashionBertForImageTextRetrieval` with a ResNet-50 patch encoder in "grid" mode (random weights: only
speed matters) and a MiniLM-size (hidden 384, 6 layers) or BERT-base-size (hidden 768, 12 layers) text encoder. The
evaluation set is synthetic and small: `--num_products` products (random 256x256 images, random `--text_length`-token
captions, `--num_subcategories` sub-categories), `--num_queries` queries with 1 + `--num_negatives` candidates per
direction, one draw, no matching pairs. Per round, for each size: the protocol runs end to end, the patch features of
all images are timed alone (images/s), and the naive loop scores `--naive_pairs` pairs; rounds alternate the methods
and the figures are medians over `--repeats` rounds.

The wall time of the full protocol (1,000 queries x 101 candidates x 2 directions = 202,000 pairs, one draw, no
matching) is EXTRAPOLATED from the measured rates, not measured:
  cached  = num_images / images_per_s + 202,000 / cached_pairs_per_s  (pair scoring alone, patch features excluded)
  naive   = 202,000 / naive_pairs_per_s
with `num_images` = `--full_num_products` (default 7,512: Fashion-Gen's 32,528 validation pairs / 4.33 views per
product, an assumption).

    python bench/speed_retrieval_protocol.py          # writes bench/results/speed_retrieval_protocol.json
    python bench/speed_retrieval_protocol.py --quick  # seconds: tiny model, 64-pixel images
"""

import statistics
import time

import torch

from xmodal.benchmarking import add_speed_arguments, bench_parser, run_environment, start_speed_run, write_json
from xmodal.evaluation.fashion_retrieval import evaluate_fashion_retrieval
from xmodal.fashionbert import FashionBertConfig, FashionBertForImageTextRetrieval


SIZES = {
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert_base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
}
FULL_PAIRS = 1000 * 101 * 2  # queries x candidates x directions, one draw


def make_eval_data(num_products: int, num_subcategories: int, text_length: int, image_size: int, seed: int) -> dict:
    """A mapping of columns as `evaluate_fashion_retrieval` takes it (one row per product)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1000, 30000, (num_products, text_length), generator=generator)
    input_ids[:, 0], input_ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    return {
        "product_id": [f"p{i}" for i in range(num_products)],
        "subcategory": [f"s{i % num_subcategories}" for i in range(num_products)],
        "input_ids": input_ids,
        "attention_mask": torch.ones(num_products, text_length, dtype=torch.long),
        "pixel_values": torch.randn(num_products, 3, image_size, image_size, generator=generator),
    }


def naive_scores(model, data: dict, text_rows: list[int], image_rows: list[int]) -> list[float]:
    """One forward per pair from pixels: the patch features are recomputed for every pair."""
    scores = []
    with torch.no_grad():
        for t, i in zip(text_rows, image_rows):
            output = model(
                input_ids=data["input_ids"][t : t + 1],
                attention_mask=data["attention_mask"][t : t + 1],
                pixel_values=data["pixel_values"][i : i + 1],
            )
            scores.append(float(output.logits[0]))
    return scores


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--sizes", nargs="+", default=["minilm", "bert_base"], choices=sorted(SIZES))
    parser.add_argument("--num_products", type=int, default=10)
    parser.add_argument("--num_subcategories", type=int, default=2)
    parser.add_argument("--num_queries", type=int, default=3)
    parser.add_argument("--num_negatives", type=int, default=4)
    parser.add_argument("--text_length", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=64, help="evaluate_fashion_retrieval's batch_size.")
    parser.add_argument("--naive_pairs", type=int, default=3, help="Pairs scored by the naive loop per round.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full_num_products", type=int, default=7512, help="Images of the extrapolated protocol.")
    add_speed_arguments(parser, "speed_retrieval_protocol", quick_help="Seconds-long run: tiny model, 64-pixel images.")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.image_size, args.repeats, args.naive_pairs = ["tiny"], 64, 2, 4
    load_before = start_speed_run(args)

    data = make_eval_data(args.num_products, args.num_subcategories, args.text_length, args.image_size, args.seed)
    models = {}
    for name in args.sizes:
        config = FashionBertConfig(
            image_size=args.image_size, patch_encoder_type="resnet", patch_feature_mode="grid", **SIZES[name]
        )
        models[name] = FashionBertForImageTextRetrieval(config).eval()
    protocol = dict(num_queries=args.num_queries, num_negatives=args.num_negatives, num_draws=1, matching=False,
                    batch_size=args.batch_size, seed=args.seed, show_progress=False)
    naive_texts = [k % args.num_products for k in range(args.naive_pairs)]
    naive_images = [(3 * k + 1) % args.num_products for k in range(args.naive_pairs)]

    timings = {name: {"protocol_s": [], "patch_features_s": [], "naive_s": []} for name in models}
    unique_pairs = {}
    for name, model in models.items():  # warm-up
        naive_scores(model, data, naive_texts[:1], naive_images[:1])
    for _ in range(args.repeats):
        # The patch encoder (ResNet-50) is the same for every size: its images/s is timed once per round.
        start = time.perf_counter()
        with torch.no_grad():
            next(iter(models.values())).bert.get_patch_features(data["pixel_values"])
        for name in models:
            timings[name]["patch_features_s"].append(time.perf_counter() - start)
        for name, model in models.items():
            start = time.perf_counter()
            result = evaluate_fashion_retrieval(model, data, **protocol)
            timings[name]["protocol_s"].append(time.perf_counter() - start)
            unique_pairs[name] = result.protocol["num_unique_pairs"]
            start = time.perf_counter()
            naive_scores(model, data, naive_texts, naive_images)
            timings[name]["naive_s"].append(time.perf_counter() - start)

    rows = {}
    for name in models:
        t = timings[name]
        pairs = unique_pairs[name]
        protocol_rates = [pairs / s for s in t["protocol_s"]]
        image_rates = [args.num_products / s for s in t["patch_features_s"]]
        # Pair scoring alone: the protocol's time minus its patch features (timed in the same round).
        cached_rates = [pairs / max(p - f, 1e-9) for p, f in zip(t["protocol_s"], t["patch_features_s"])]
        naive_rates = [args.naive_pairs / s for s in t["naive_s"]]
        speedups = [p / n for p, n in zip(protocol_rates, naive_rates)]
        images_per_s, cached_per_s = statistics.median(image_rates), statistics.median(cached_rates)
        naive_per_s = statistics.median(naive_rates)
        rows[name] = {
            "sizes": SIZES[name],
            "measured": {
                "unique_pairs": pairs,
                "protocol_pairs_per_second": statistics.median(protocol_rates),
                "patch_feature_images_per_second": images_per_s,
                "cached_pair_scoring_pairs_per_second": cached_per_s,
                "naive_pairs_per_second": naive_per_s,
                "speedup_protocol_over_naive": statistics.median(speedups),
                "speedup_all_rounds": speedups,
                "seconds_all_rounds": t,
            },
            "extrapolated_full_protocol": {
                "pairs": FULL_PAIRS,
                "images": args.full_num_products,
                "cached_hours": (args.full_num_products / images_per_s + FULL_PAIRS / cached_per_s) / 3600,
                "naive_hours": FULL_PAIRS / naive_per_s / 3600,
            },
        }
    result = {
        "config": {k: v for k, v in vars(args).items() if k != "output"},
        "patch_encoder": "ResNet-50, patch_feature_mode='grid' (random weights)",
        "sizes": rows,
        "extrapolation_note": "EXTRAPOLATED, not measured: 1,000 queries x 101 candidates x 2 directions, one draw, "
        "no matching pairs; images = --full_num_products (assumed); same CPU and thread count as measured",
        "environment": run_environment(load_before),
    }
    write_json(args.output, result)
    print(f"{'size':<10} {'protocol p/s':>13} {'naive p/s':>10} {'speedup':>8} {'full: cached h':>15} {'naive h':>9}")
    for name, row in rows.items():
        m, e = row["measured"], row["extrapolated_full_protocol"]
        print(f"{name:<10} {m['protocol_pairs_per_second']:13.2f} {m['naive_pairs_per_second']:10.2f} "
              f"{m['speedup_protocol_over_naive']:7.1f}x {e['cached_hours']:15.2f} {e['naive_hours']:9.2f}")
    print("(full-protocol hours are extrapolated from the measured rates, not measured)")


if __name__ == "__main__":
    main()
