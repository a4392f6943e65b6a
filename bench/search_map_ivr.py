"""Indexed search with MAP-IVR: an `EmbeddingIndex` over the video appearance codes a^v (S_A), then exact S_V and
S_all on the candidates only (`ActivityRetriever.search_videos`), against the exhaustive `rank_videos`.

    python train.py --model_type map_ivr                       # writes outputs/map_ivr/final
    python bench/search_map_ivr.py --model outputs/map_ivr/final

Tables (bench/results/search_map_ivr.json):
  recall: on the synthetic activity test split (train.py's seed 42: 560 videos, every test image a query), the share
      of the exhaustive S_all top 10 that the indexed search returns, for first-stage k in `--first_stage_ks`, float32
      and float16 storage;
  latency: per query on one thread (first stage + exact S_V / S_all on k = 100 candidates), p50 / p95, for
      `--latency_sizes` indexed videos (random features of the model's size: the cost does not depend on their
      values), exact index, and the memory per indexed video.
"""

import os
import time

import numpy as np
import torch

from xmodal.benchmarking import add_output_argument, bench_parser, run_environment, write_json
from xmodal.data.activity_sources import activity_arrays
from xmodal.data.activity_synthetic import make_activity_dataset
from xmodal.retrieval import ActivityRetriever


def recall_table(retriever: ActivityRetriever, test, ks: list[int]) -> dict:
    arrays = activity_arrays(test)
    queries = np.flatnonzero(np.asarray(test["is_query"], dtype=bool))
    videos, scores, mask = arrays["video_features"], arrays["proposal_scores"], arrays["proposal_mask"]
    exhaustive = [set(retriever.rank_videos(arrays["image_features"][q], videos, top_k=10, proposal_scores=scores,
                                            proposal_mask=mask).indices.tolist()) for q in queries]  # fmt: skip
    table = {"gallery": len(videos), "queries": len(queries)}
    for dtype in ("float32", "float16"):
        index = retriever.build_index(videos, proposal_scores=scores, proposal_mask=mask, dtype=dtype)
        for k in ks:
            kept = [len(truth & set(retriever.search_videos(arrays["image_features"][q], top_k=10, first_stage_k=k).indices.tolist())) / 10
                    for q, truth in zip(queries, exhaustive)]  # fmt: skip
            table[f"{dtype}/k={k}"] = {"top10_kept_percent": float(100.0 * np.mean(kept)), "backend": index.backend}
            print(f"  {dtype}, k = {k}: {table[f'{dtype}/k={k}']['top10_kept_percent']:.1f} % of the exhaustive top 10", flush=True)
    return table


def latency_table(retriever: ActivityRetriever, sizes: list[int], num_queries: int) -> dict:
    torch.set_num_threads(1)
    config = retriever.model.config
    generator = np.random.default_rng(0)
    table = {}
    for size in sizes:
        videos = generator.standard_normal((size, config.video_feature_dim), dtype=np.float32)
        images = generator.standard_normal((num_queries, config.image_feature_dim), dtype=np.float32)
        for dtype in ("float32", "float16"):
            started = time.monotonic()
            retriever.build_index(videos, dtype=dtype)
            build_seconds = time.monotonic() - started
            timings = []
            for query in images:
                started = time.perf_counter()
                retriever.search_videos(query, top_k=10, first_stage_k=100)
                timings.append(1000.0 * (time.perf_counter() - started))
            item_bytes = (config.appearance_dim + config.video_feature_dim) * (4 if dtype == "float32" else 2) + 8
            index = retriever.index
            table[f"{size}/{dtype}"] = {"p50_ms": float(np.percentile(timings, 50)), "p95_ms": float(np.percentile(timings, 95)),
                                        "build_seconds": build_seconds, "bytes_per_video": item_bytes,
                                        "backend": index.backend, "kind": index.kind, "params": index.params}  # fmt: skip
            print(f"  {size:>9,} videos, {dtype}, {index.backend} {index.kind}: p50 {table[f'{size}/{dtype}']['p50_ms']:.1f} ms, "
                  f"{item_bytes} B/video", flush=True)  # fmt: skip
        retriever.clear_cache()
    return table


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--model", required=True, help="A MAP-IVR folder (what train.py --model_type map_ivr writes).")
    parser.add_argument("--first_stage_ks", type=int, nargs="+", default=[20, 50, 100], help="First-stage candidates k.")
    parser.add_argument("--latency_sizes", type=int, nargs="+", default=[10_000, 100_000], help="Indexed videos.")
    parser.add_argument("--latency_queries", type=int, default=50, help="Queries timed per size.")
    add_output_argument(parser, "search_map_ivr")
    args = parser.parse_args()

    load_before = os.getloadavg()
    retriever = ActivityRetriever.from_pretrained(args.model)
    test = make_activity_dataset(num_videos_per_class=1, num_test_videos_per_class=40, seed=42, show_progress=False)["test"]
    result = {"model": args.model, "recall": recall_table(retriever, test, args.first_stage_ks)}
    result["latency"] = latency_table(retriever, args.latency_sizes, args.latency_queries)
    result["environment"] = run_environment(load_before)
    write_json(args.output, result)


if __name__ == "__main__":
    main()
