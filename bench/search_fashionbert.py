"""Catalogue-scale search with FashionBERT: the trained first stage (dual-encoder heads + `EmbeddingIndex`) and the
cross-encoder re-rank, on products the model never saw.

Needs a FashionBERT folder with dual-encoder heads, e.g. `python train.py --contrastive_projection_dim 256
--output_dir outputs/fashionbert_itc`. The catalogue is a fresh synthetic one (`--catalogue_seed`, not train.py's
seed 42, so none of its products was trained on), one view per product, at the model's image size.

    python bench/search_fashionbert.py --model outputs/fashionbert_itc/final

Tables (all in bench/results/search_fashionbert.json):
  (a) first stage alone: Rank@1/10/100 of the ground truth, text -> image and image -> text, `--catalogue` products;
  (b) of the exhaustive cross-encoder top 10, the share the first stage's top k keeps (`--overlap_gallery` images,
      `--overlap_queries` queries, k in `--first_stage_ks`);
  (c) final Rank@1 of two-stage search vs exhaustive cross-encoder ranking on that gallery;
  (d) first-stage latency per query on one thread (text encoding + index search), p50 / p95 over `--latency_queries`
      queries, for `--latency_sizes` indexed items (random unit vectors: the search cost does not depend on their
      values), exact, HNSW up to 10^5 items (its one-thread build grows past minutes beyond), IVF from 10^5 (nlist =
      sqrt(N), nprobe = nlist / 8; its k-means trains on 256 vectors per list); for the approximate kinds also the
      share of the exact top 100 they return (on random vectors, the hardest case for them); and the cross-encoder's
      re-rank cost per candidate, stated separately.

`--tables d` reruns only table (d) (likewise any subset); the other tables are kept from the existing `--output`.
"""

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from xmodal.benchmarking import add_output_argument, bench_parser, run_environment, write_json
from xmodal.data.fashion_synthetic import make_fashion_dataset
from xmodal.evaluation.ranking import rank_of_ground_truth, recall_at_k
from xmodal.indexing import EmbeddingIndex, faiss_available
from xmodal.retrieval import FashionRetriever

RANKS = (1, 10, 100)


def first_stage_recall(similarity: np.ndarray) -> dict[str, float]:
    """Rank@K of item i for query i in a (Q, N) similarity matrix whose ground truth is the diagonal."""
    ranks = rank_of_ground_truth(similarity, ground_truth=np.arange(len(similarity)))
    return {f"R@{k}": value for k, value in recall_at_k(ranks, RANKS).items()}


@torch.no_grad()
def text_embeddings(retriever: FashionRetriever, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    chunks = []
    for start in range(0, len(texts), batch_size):
        encoded = retriever.processor(text=texts[start : start + batch_size], return_tensors="pt")
        chunks.append(retriever.model.bert.get_text_embeddings(encoded["input_ids"], encoded["attention_mask"], encoded.get("token_type_ids")))
    return torch.cat(chunks).float()


def first_stage_table(retriever: FashionRetriever, images: list, texts: list[str]) -> dict:
    """(a): the dual encoder alone over the whole catalogue, both directions."""
    _, image_vectors = retriever.encode_images(images)  # unit image embeddings (the retriever's first-stage vectors)
    similarity = (text_embeddings(retriever, texts) @ image_vectors.T).numpy()
    return {"text_to_image": first_stage_recall(similarity), "image_to_text": first_stage_recall(similarity.T),
            "num_products": len(images)}


def overlap_tables(retriever: FashionRetriever, images: list, texts: list[str], num_queries: int, ks: list[int]) -> dict:
    """(b) and (c): exhaustive cross-encoder scores of `num_queries` captions against every image of the gallery."""
    features, image_vectors = retriever.encode_images(images)
    queries = np.linspace(0, len(images) - 1, num_queries).round().astype(int)
    first_stage = (text_embeddings(retriever, [texts[q] for q in queries]) @ image_vectors.T).numpy()
    started = time.monotonic()
    cross = [retriever.rank_images(texts[q], images, top_k=len(images)) for q in queries]
    seconds = time.monotonic() - started
    # rank_images returns the whole ranking: turn it back into a score per gallery image.
    scores = np.empty((len(queries), len(images)), dtype=np.float64)
    for row, result in enumerate(cross):
        scores[row, result.indices.numpy()] = result.scores.numpy()
    exhaustive_top10 = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    exhaustive_rank1 = float(100.0 * (exhaustive_top10[:, 0] == queries).mean())
    table = {"gallery": len(images), "queries": len(queries), "exhaustive_rank1": exhaustive_rank1,
             "exhaustive_seconds": seconds, "pairs_scored": int(scores.size), "by_k": {}}
    for k in ks:
        candidates = np.argsort(-first_stage, axis=1, kind="stable")[:, :k]
        kept = np.mean([len(set(top) & set(cand)) / 10.0 for top, cand in zip(exhaustive_top10, candidates)])
        best = candidates[np.arange(len(queries)), np.argmax(np.take_along_axis(scores, candidates, axis=1), axis=1)]
        table["by_k"][str(k)] = {"top10_kept_percent": float(100.0 * kept), "two_stage_rank1": float(100.0 * (best == queries).mean()),
                                 "first_stage_contains_truth_percent": float(100.0 * np.mean([q in c for q, c in zip(queries, candidates)]))}
    return table


def latency_kinds(size: int) -> dict[str, dict]:
    """The index kinds timed at `size` items, with their parameters."""
    kinds = {"exact": {}}
    if faiss_available() and size <= 100_000:
        kinds["hnsw"] = {}
    if faiss_available() and size >= 100_000:
        nlist = round(math.sqrt(size))
        kinds["ivf"] = {"nlist": nlist, "nprobe": max(1, nlist // 8)}
    return kinds


def latency_table(retriever: FashionRetriever, texts: list[str], sizes: list[int], num_queries: int, rerank_images: list) -> dict:
    """(d): per-query first-stage latency on one thread, and the cross-encoder's cost per re-ranked candidate."""
    torch.set_num_threads(1)
    dim = retriever.model.config.contrastive_projection_dim
    generator = np.random.default_rng(0)
    table = {"dim": dim, "sizes": {}}
    for size in sizes:
        vectors = generator.standard_normal((size, dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        exact_top = None
        for kind, params in latency_kinds(size).items():
            started = time.monotonic()
            index = EmbeddingIndex.build(vectors, kind=kind, **params)
            build_seconds = time.monotonic() - started
            timings, found = [], []
            for query in range(num_queries):
                started = time.perf_counter()
                embedding = text_embeddings(retriever, [texts[query % len(texts)]])
                _, ids = index.search(embedding.numpy(), 100)
                timings.append(1000.0 * (time.perf_counter() - started))
                found.append(ids[0])
            row = {"backend": index.backend, "kind": index.kind, "params": index.params,
                   "p50_ms": float(np.percentile(timings, 50)), "p95_ms": float(np.percentile(timings, 95)),
                   "build_seconds": build_seconds, "bytes_per_item_vectors": int(vectors.itemsize * dim + 8)}  # fmt: skip
            if kind == "exact":
                exact_top = found
            else:
                kept = [len(set(a.tolist()) & set(e.tolist())) / len(e) for a, e in zip(found, exact_top)]
                row["recall_at_100_vs_exact"] = 100.0 * float(np.mean(kept))
            table["sizes"][f"{size}/{kind}"] = row
            print(f"  {size:>9,} items, {kind:5}: p50 {row['p50_ms']:.1f} ms, p95 {row['p95_ms']:.1f} ms, build "
                  f"{build_seconds:.1f} s" + (f", recall {row['recall_at_100_vs_exact']:.1f} %" if kind != "exact" else ""),
                  flush=True)  # fmt: skip
            del index
    retriever.encode_images(rerank_images)  # patch features cached: the re-rank cost is the cross-encoder's alone
    started = time.perf_counter()
    retriever.rank_images(texts[0], rerank_images, top_k=10)
    table["rerank_ms_per_candidate_one_thread"] = 1000.0 * (time.perf_counter() - started) / len(rerank_images)
    return table


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--model", required=True, help="A FashionBERT folder with dual-encoder heads.")
    parser.add_argument("--catalogue", type=int, default=2000, help="Products of the fresh synthetic catalogue (table a).")
    parser.add_argument("--catalogue_seed", type=int, default=7, help="Seed of that catalogue (train.py trains on seed 42).")
    parser.add_argument("--overlap_gallery", type=int, default=500, help="Images scored exhaustively by the cross-encoder (b, c).")
    parser.add_argument("--overlap_queries", type=int, default=40, help="Queries of tables b and c.")
    parser.add_argument("--first_stage_ks", type=int, nargs="+", default=[50, 100, 200], help="First-stage candidates k.")
    parser.add_argument("--latency_sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="Indexed items (d).")
    parser.add_argument("--latency_queries", type=int, default=50, help="Queries timed per size (d).")
    parser.add_argument("--threads", type=int, default=2, help="Torch threads for tables a-c (d always uses one).")
    parser.add_argument("--tables", nargs="+", choices=["a", "b", "c", "d"], default=["a", "b", "c", "d"],
                        help="Tables to run (b and c run together); the others are kept from the existing --output.")
    add_output_argument(parser, "search_fashionbert")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    retriever = FashionRetriever.from_pretrained(args.model, rerank_top_n=None)
    if not retriever.has_dual_encoder:
        parser.error(f"--model {args.model}: no dual-encoder heads; train with --contrastive_projection_dim")
    size = retriever.processor.image_processor.image_size
    result = {}
    if set(args.tables) != {"a", "b", "c", "d"} and Path(args.output).is_file():
        result = json.loads(Path(args.output).read_text())
        if result.get("model") != args.model:
            parser.error(f"--tables {' '.join(args.tables)}: {args.output} holds the tables of another model "
                         f"({result.get('model')}); run every table for --model {args.model}")
    catalogue = make_fashion_dataset(args.catalogue, views_per_product=1, image_size=size, seed=args.catalogue_seed,
                                     split_fractions={"train": 1.0})["train"]  # fmt: skip
    images, texts = [image.convert("RGB") for image in catalogue["image"]], list(catalogue["text"])
    result.update({"model": args.model, "catalogue_seed": args.catalogue_seed})
    if "a" in args.tables:
        result["first_stage"] = first_stage_table(retriever, images, texts)
        print("(a) first stage:", result["first_stage"], flush=True)
    if {"b", "c"} & set(args.tables):
        result["two_stage"] = overlap_tables(retriever, images[: args.overlap_gallery], texts[: args.overlap_gallery],
                                             args.overlap_queries, args.first_stage_ks)  # fmt: skip
        print("(b, c) two stage:", result["two_stage"], flush=True)
    if "d" in args.tables:
        result["latency"] = latency_table(retriever, texts, args.latency_sizes, args.latency_queries, images[:100])
        result["environment"] = run_environment(load_before)
    write_json(args.output, result)


if __name__ == "__main__":
    main()
