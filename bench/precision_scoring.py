"""
What scoring in bf16 instead of float32 changes on one trained FashionBERT (the quickstart's folder) on a CPU with
AVX-512-BF16 / AMX units, each part timed in both precisions in the same process:

* protocol: the paper's retrieval protocol on train.py's synthetic test split (`evaluate_fashion_retrieval`, the
  cross-encoder, first stage and fused scores; train.py's seed and sizes), its numbers and wall time;
* catalogue: `FashionRetriever` over app.py's 10,000-product catalogue, indexed in each precision: the first stage's
  recall of each query caption's own product (R@10 / R@100 over the image index), how many of the default search's
  top-10 lists are identical between the two precisions (and their mean overlap), and the index-building time;
* speed: cross-encoder pairs per second (`score_pairs`, 48-token captions, the catalogue's images);
* keep rate (`--keep_rate_queries` > 0, bf16, what the demo runs): for caption queries, the share of the exhaustive
  top 10 (every catalogue image re-ranked by the fused score) that a search re-ranking only the first stage's top
  `d` keeps, for each depth `d` of `--depths`: the demo's default depth is the smallest with >= 95 %.

    python bench/precision_scoring.py --model outputs/fashionbert/final --catalogue_dir outputs/fashionbert/catalogue
    python bench/precision_scoring.py ... --parts keep_rate --keep_rate_queries 16 --output bench/results/rerank_depth.json
"""

import os
import time
from pathlib import Path

import numpy as np
import torch

from xmodal.benchmarking import add_output_argument, bench_parser, run_environment, write_json
from xmodal.data.fashion_synthetic import make_fashion_dataset
from xmodal.evaluation.fashion_retrieval import evaluate_fashion_retrieval
from xmodal.retrieval import FashionRetriever
from xmodal.retrieval.fashionbert import FIRST_STAGE_K
from xmodal.training.fashionbert import QUICK_RECIPE, SYNTHETIC_NUM_PRODUCTS, SYNTHETIC_VIEWS_PER_PRODUCT
from xmodal.training import DEFAULT_SEED

PRECISIONS = ("float32", "bf16")
PROTOCOL_KEYS = ("image_to_text/R@1", "text_to_image/R@1", "image_to_text/R@10", "text_to_image/R@10", "tia/auc")


def catalogue_of(folder: Path) -> tuple[list[str], list[str], list[str]]:
    """(image paths, captions, product ids) of a catalogue app.py rendered."""
    import json

    [rendered] = [p for p in folder.iterdir() if (p / "catalogue.json").is_file()] or [None]
    if rendered is None:
        raise SystemExit(f"{folder}: no rendered catalogue (run app.py once)")
    rows = json.loads((rendered / "catalogue.json").read_text())["rows"]
    return [str(rendered / "images" / f) for f in rows["files"]], rows["captions"], rows["product_ids"]


def protocol_part(model: str) -> dict:
    test = make_fashion_dataset(SYNTHETIC_NUM_PRODUCTS, SYNTHETIC_VIEWS_PER_PRODUCT, QUICK_RECIPE.image_size, seed=DEFAULT_SEED)["test"]
    out = {}
    for precision in PRECISIONS:
        retriever = FashionRetriever.from_pretrained(model, precision=precision)
        started = time.perf_counter()
        result = evaluate_fashion_retrieval(retriever.model, test, retriever.processor, seed=DEFAULT_SEED, show_progress=False,
                                            precision=precision)  # fmt: skip
        seconds = time.perf_counter() - started
        metrics = {k: v for k, v in result.metrics.items() if any(k.endswith(key) for key in PROTOCOL_KEYS)}
        out[precision] = {"seconds": seconds, "pairs": result.protocol["num_unique_pairs"], "metrics": metrics}
        print(f"protocol {precision}: {seconds:.0f} s, " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())), flush=True)
    return out


def catalogue_part(model: str, paths, captions, product_ids, queries: int, depth: int) -> dict:
    rng = np.random.default_rng(0)
    picks = rng.choice(len(paths), queries, replace=False)
    product_rows: dict[str, list[int]] = {}
    for row, product in enumerate(product_ids):
        product_rows.setdefault(product, []).append(row)
    out, top10 = {}, {}
    for precision in PRECISIONS:
        retriever = FashionRetriever.from_pretrained(model, rerank_top_n=depth, cache_size=4 * depth, precision=precision)
        started = time.perf_counter()
        retriever.build_index(paths)
        index_seconds = time.perf_counter() - started
        recall = {10: [], 100: []}
        top10[precision] = []
        started = time.perf_counter()
        for row in picks:
            text_vector = retriever._text_vectors(retriever._tokenize([captions[row]]))
            _, found = retriever.index.search(text_vector, 100)
            truth = set(product_rows[product_ids[row]])
            for k in recall:
                recall[k].append(bool(truth & set(found[0][:k].tolist())))
            top10[precision].append(retriever.search_images(captions[row], top_k=10, first_stage_k=depth).indices.tolist())
        query_seconds = (time.perf_counter() - started) / queries
        out[precision] = {"index_seconds": index_seconds, "first_stage_recall": {f"R@{k}": 100 * float(np.mean(v)) for k, v in recall.items()},
                          "seconds_per_search": query_seconds}  # fmt: skip
        print(f"catalogue {precision}: index {index_seconds:.0f} s, first-stage R@10 {out[precision]['first_stage_recall']['R@10']:.1f} %, "
              f"R@100 {out[precision]['first_stage_recall']['R@100']:.1f} %, {query_seconds:.2f} s per search", flush=True)  # fmt: skip
        del retriever
    same = [a == b for a, b in zip(top10["float32"], top10["bf16"])]
    overlap = [len(set(a) & set(b)) / 10 for a, b in zip(top10["float32"], top10["bf16"])]
    out["top10_identical"] = f"{sum(same)}/{len(same)}"
    out["top10_mean_overlap_percent"] = 100 * float(np.mean(overlap))
    print(f"top-10 lists identical in both precisions: {out['top10_identical']}, mean overlap {out['top10_mean_overlap_percent']:.1f} %", flush=True)
    return out


def speed_part(model: str, paths: list[str], pairs: int, repeats: int) -> dict:
    out = {}
    texts = ["red long-sleeve dress with a round neck and a pleated skirt in soft cotton for every day"] * 1
    for precision in PRECISIONS:
        retriever = FashionRetriever.from_pretrained(model, precision=precision)
        features, _ = retriever.encode_images(paths[:pairs])
        encoded = retriever.processor(text=texts, return_tensors="pt", padding="max_length", max_length=48, truncation=True)
        args = (encoded["input_ids"], encoded["attention_mask"], features, torch.zeros(pairs, dtype=torch.long), torch.arange(pairs))
        with retriever._autocast():
            retriever.model.score_pairs(*args, batch_size=retriever.batch_size)  # warm-up
            rates = []
            for _ in range(repeats):
                started = time.perf_counter()
                retriever.model.score_pairs(*args, batch_size=retriever.batch_size)
                rates.append(pairs / (time.perf_counter() - started))
        out[precision] = {"pairs_per_second": float(np.median(rates)), "all": rates}
        print(f"speed {precision}: {out[precision]['pairs_per_second']:.0f} pairs/s", flush=True)
    out["ratio_bf16_over_float32"] = out["bf16"]["pairs_per_second"] / out["float32"]["pairs_per_second"]
    return out


def keep_rate_part(model: str, paths, captions, queries: int, depths: list[int]) -> dict:
    """Share of the exhaustive fused top 10 that re-ranking the first stage's top d keeps (bf16)."""
    rng = np.random.default_rng(1)
    unique = sorted(set(captions))
    picks = [unique[i] for i in rng.choice(len(unique), queries, replace=False)]
    retriever = FashionRetriever.from_pretrained(model, rerank_top_n=None, cache_size=len(paths) + 1, precision="bf16")
    retriever.build_index(paths, show_progress=True)
    kept = {d: [] for d in depths}
    started = time.perf_counter()
    for number, query in enumerate(picks, start=1):
        exhaustive = set(retriever.search_images(query, top_k=10, first_stage_k=len(paths)).indices.tolist())
        for d in depths:
            found = set(retriever.search_images(query, top_k=10, first_stage_k=d).indices.tolist())
            kept[d].append(len(found & exhaustive) / 10)
        print(f"query {number}/{queries} ({time.perf_counter() - started:.0f} s): " + ", ".join(f"d={d} {100 * np.mean(kept[d]):.1f} %" for d in depths), flush=True)
    rates = {str(d): 100 * float(np.mean(v)) for d, v in kept.items()}
    chosen = next((d for d in depths if rates[str(d)] >= 95.0), None)
    return {"queries": queries, "keep_rate_percent": rates, "smallest_depth_keeping_95_percent": chosen}


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--model", default="outputs/fashionbert/final")
    parser.add_argument("--catalogue_dir", default="outputs/fashionbert/catalogue")
    parser.add_argument("--parts", nargs="+", default=["protocol", "catalogue", "speed"], choices=["protocol", "catalogue", "speed", "keep_rate"])
    parser.add_argument("--queries", type=int, default=200, help="Caption queries of the catalogue part.")
    parser.add_argument("--depth", type=int, default=FIRST_STAGE_K, help="Re-rank depth of the catalogue part's searches (default: the library's and app.py's).")
    parser.add_argument("--pairs", type=int, default=256, help="Pairs per timing of the speed part.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep_rate_queries", type=int, default=16)
    parser.add_argument("--depths", type=int, nargs="+", default=[10, 20, 30, 50, 100, 200])
    parser.add_argument("--threads", type=int, default=2)
    add_output_argument(parser, "precision_scoring")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    paths, captions, product_ids = catalogue_of(Path(args.catalogue_dir))
    result = {"model": args.model, "catalogue_images": len(paths)}
    if "protocol" in args.parts:
        result["protocol"] = protocol_part(args.model)
    if "catalogue" in args.parts:
        result["catalogue"] = catalogue_part(args.model, paths, captions, product_ids, args.queries, args.depth)
        result["catalogue"]["queries"], result["catalogue"]["depth"] = args.queries, args.depth
    if "speed" in args.parts:
        result["speed"] = speed_part(args.model, paths, args.pairs, args.repeats)
    if "keep_rate" in args.parts:
        result["keep_rate"] = keep_rate_part(args.model, paths, captions, args.keep_rate_queries, args.depths)
        print(f"keep rate: {result['keep_rate']}", flush=True)
    result["environment"] = run_environment(load_before)
    write_json(args.output, result)


if __name__ == "__main__":
    main()
