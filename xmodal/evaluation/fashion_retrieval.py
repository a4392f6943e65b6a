# Copyright 2025 The xmodal authors. Licensed under the Apache License, Version 2.0.
"""FashionBERT's cross-modal retrieval and matching protocol (Gao et al., SIGIR 2020, Sec. 4).

Protocol (the paper's evaluation protocol, as implemented here):

- One image-text pair per product: the product's *first row in dataset order* (for the synthetic
  test bed, view 0). Other views of the same product are never candidates.
- Retrieval, for each direction (image->text and text->image): `num_queries` products (1,000 by
  default; all when fewer) are drawn without replacement. Each query is ranked against 1 + 100
  candidates: its own pair (the ground truth, column 0) and 100 negatives = pairs of *other
  products of the same sub-category*, drawn without replacement. When the sub-category has fewer
  than 100 other products, all of them are used and the rest is topped up at random from other
  sub-categories. Rows with an unknown sub-category (None, "" or NaN) get negatives drawn at
  random from all other products. Ranking score: the model's TIA logit of "aligned" (log-odds).
- Rank@K (K = 1, 5, 10): % of queries whose ground truth is within the top K. Ties are broken
  pessimistically: a negative scoring exactly the ground truth's score is ranked above it, so a
  constant scorer gets rank 101, never a lucky 1.
- Matching (TIA): every product's aligned pair plus one negative pair (its image with the text of
  another product of the same sub-category; any other product when it is alone or unknown).
  Accuracy (%) predicts "aligned" when the score > `matching_threshold` (0 = probability 0.5 for
  log-odds); AUC (in [0, 1]) is the Mann-Whitney statistic over the same pairs.
- Everything is repeated over `num_draws` seeded draws (the paper averages 3 runs, FashionViL 5);
  the result holds the mean, the sample standard deviation (ddof=1; 0 for a single draw) and each
  draw's numbers. Draw `d` of direction `x` uses `numpy.random.default_rng([seed + d, code(x)])`.

Scoring is batched: each unique (text, image) pair is scored once (shared across directions and
draws), and each image's patch features are computed once with `get_patch_features` and reused.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .ranking import mann_whitney_auc, rank_of_ground_truth, recall_at_k


__all__ = [
    "DIRECTIONS",
    "RetrievalProtocol",
    "MatchingPairs",
    "FashionRetrievalResult",
    "representative_rows",
    "build_retrieval_protocol",
    "build_matching_pairs",
    "retrieval_metrics_from_scores",
    "matching_metrics_from_scores",
    "evaluate_pair_scorer",
    "evaluate_fashion_retrieval",
    "ProtocolDraws",
    "draw_protocol",
    "protocol_result",
    "mean_reciprocal_rank",
    "listwise_log_likelihood",
    "score_protocol_pairs",
    "choose_fusion_weight",
    "FUSION_WEIGHTS",
]

DIRECTIONS: tuple[str, ...] = ("image_to_text", "text_to_image")
_DIRECTION_CODE = {"image_to_text": 1, "text_to_image": 2, "matching": 3}


# --------------------------------------------------------------------------------------------
# Protocol construction
# --------------------------------------------------------------------------------------------


def _is_unknown(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() == ""


def representative_rows(product_ids: Sequence) -> np.ndarray:
    """Row index of each product's first row, in order of first appearance (one pair per product)."""
    seen: dict = {}
    for row, pid in enumerate(product_ids):
        if pid not in seen:
            seen[pid] = row
    return np.fromiter(seen.values(), dtype=np.int64, count=len(seen))


@dataclass
class RetrievalProtocol:
    """Queries and candidates of one draw of the retrieval protocol.

    Attributes:
        direction (`str`): "image_to_text" (query = image, candidates = texts) or "text_to_image".
        query_rows (`np.ndarray`): (Q,) dataset row of each query (its product's representative row).
        candidate_rows (`np.ndarray`): (Q, 1 + num_negatives) dataset rows of the candidates; column 0
            is the ground truth (the query's own row), the others are rows of other products.
        num_same_subcategory (`np.ndarray`): (Q,) how many negatives come from the query's own
            sub-category (the rest were topped up from other sub-categories, or drawn at random).
    """

    direction: str
    query_rows: np.ndarray
    candidate_rows: np.ndarray
    num_same_subcategory: np.ndarray

    @property
    def ground_truth(self) -> np.ndarray:
        """(Q,) column of the ground truth in `candidate_rows` (always 0)."""
        return np.zeros(len(self.query_rows), dtype=np.int64)

    def pair_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(text_rows, image_rows), each (Q, 1 + num_negatives): the pair scored for each cell."""
        queries = np.broadcast_to(self.query_rows[:, None], self.candidate_rows.shape)
        if self.direction == "image_to_text":
            return self.candidate_rows, queries
        return queries, self.candidate_rows


def _pick_excluding(rng: np.random.Generator, pool: np.ndarray, exclude_pos: int | None, k: int) -> np.ndarray:
    """k distinct items of `pool` without replacement, never `pool[exclude_pos]`."""
    n = len(pool) - (exclude_pos is not None)
    picks = rng.choice(n, size=k, replace=False)
    if exclude_pos is not None:
        picks = picks + (picks >= exclude_pos)
    return pool[picks]


def _subcategory_groups(subcats: list) -> tuple[dict, np.ndarray]:
    """Sub-category -> sorted array of product positions; and a bool mask of unknown products."""
    groups: dict = {}
    unknown = np.zeros(len(subcats), dtype=bool)
    for pos, s in enumerate(subcats):
        if _is_unknown(s):
            unknown[pos] = True
        else:
            groups.setdefault(s, []).append(pos)
    return {s: np.asarray(v, dtype=np.int64) for s, v in groups.items()}, unknown


def build_retrieval_protocol(
    product_ids: Sequence,
    subcategories: Sequence | None = None,
    num_queries: int = 1000,
    num_negatives: int = 100,
    seed: int = 0,
    direction: str = "image_to_text",
) -> RetrievalProtocol:
    """Draws one retrieval protocol (see the module docstring for the rules).

    Args:
        product_ids: (num_rows,) product id of every dataset row (several rows may share one).
        subcategories: (num_rows,) sub-category of every row; None = unknown for all.
        num_queries: queries to draw (all products when there are fewer).
        num_negatives: negatives per query (100 in the paper).
        seed: draw seed; the same arguments always give the same protocol.
        direction: "image_to_text" or "text_to_image" (each direction draws its own queries).

    Raises:
        ValueError: unknown direction, lengths that differ, or fewer than `num_negatives + 1` products.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if num_queries < 1 or num_negatives < 1:
        raise ValueError(f"num_queries and num_negatives must be >= 1, got {num_queries} and {num_negatives}")
    product_ids = list(product_ids)
    if subcategories is not None and len(subcategories) != len(product_ids):
        raise ValueError(f"subcategories has {len(subcategories)} entries for {len(product_ids)} product_ids")
    reps = representative_rows(product_ids)
    num_products = len(reps)
    if num_products < num_negatives + 1:
        raise ValueError(
            f"the protocol needs at least num_negatives + 1 = {num_negatives + 1} products, the data has "
            f"{num_products}; pass a smaller num_negatives for a small evaluation set"
        )
    subcats = [None] * num_products if subcategories is None else [subcategories[r] for r in reps]
    groups, unknown = _subcategory_groups(subcats)
    everyone = np.arange(num_products, dtype=np.int64)
    others_of: dict = {}  # sub-category -> products outside it (built lazily)

    rng = np.random.default_rng([seed, _DIRECTION_CODE[direction]])
    num_q = min(num_queries, num_products)
    queries = rng.choice(num_products, size=num_q, replace=False)
    candidates = np.empty((num_q, num_negatives + 1), dtype=np.int64)
    same = np.zeros(num_q, dtype=np.int64)
    for i, p in enumerate(queries):
        candidates[i, 0] = p
        if unknown[p]:
            candidates[i, 1:] = _pick_excluding(rng, everyone, int(p), num_negatives)
            continue
        group = groups[subcats[p]]
        pos_in_group = int(np.searchsorted(group, p))
        available = len(group) - 1
        if available >= num_negatives:
            candidates[i, 1:] = _pick_excluding(rng, group, pos_in_group, num_negatives)
            same[i] = num_negatives
        else:
            # All same-sub-category products, topped up from other sub-categories.
            own = rng.permutation(np.delete(group, pos_in_group))
            key = subcats[p]
            if key not in others_of:
                others_of[key] = np.setdiff1d(everyone, group, assume_unique=True)
            top_up = _pick_excluding(rng, others_of[key], None, num_negatives - available)
            candidates[i, 1:] = np.concatenate([own, top_up])
            same[i] = available
    return RetrievalProtocol(
        direction=direction,
        query_rows=reps[queries],
        candidate_rows=reps[candidates],
        num_same_subcategory=same,
    )


@dataclass
class MatchingPairs:
    """Pairs of the matching (TIA) evaluation of one draw.

    Attributes:
        image_rows (`np.ndarray`): (P,) representative row of every product.
        positive_text_rows (`np.ndarray`): (P,) equal to `image_rows` (the aligned pairs).
        negative_text_rows (`np.ndarray`): (P,) row of another product of the same sub-category
            (any other product when the product is alone in it or its sub-category is unknown).
    """

    image_rows: np.ndarray
    positive_text_rows: np.ndarray
    negative_text_rows: np.ndarray


def build_matching_pairs(product_ids: Sequence, subcategories: Sequence | None = None, seed: int = 0) -> MatchingPairs:
    """One aligned and one same-sub-category negative pair per product (deterministic in `seed`)."""
    reps = representative_rows(list(product_ids))
    num_products = len(reps)
    if num_products < 2:
        raise ValueError(f"matching needs at least 2 products, the data has {num_products}")
    subcats = [None] * num_products if subcategories is None else [subcategories[r] for r in reps]
    groups, unknown = _subcategory_groups(subcats)
    everyone = np.arange(num_products, dtype=np.int64)
    rng = np.random.default_rng([seed, _DIRECTION_CODE["matching"]])
    negatives = np.empty(num_products, dtype=np.int64)
    for p in range(num_products):
        group = None if unknown[p] else groups[subcats[p]]
        if group is None or len(group) < 2:
            negatives[p] = _pick_excluding(rng, everyone, p, 1)[0]
        else:
            negatives[p] = _pick_excluding(rng, group, int(np.searchsorted(group, p)), 1)[0]
    return MatchingPairs(image_rows=reps, positive_text_rows=reps.copy(), negative_text_rows=reps[negatives])


# --------------------------------------------------------------------------------------------
# Metrics from scores
# --------------------------------------------------------------------------------------------


def retrieval_metrics_from_scores(scores, ground_truth=None, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Rank@K from a (num_queries, num_candidates) score matrix (higher = better match).

    Args:
        scores: (num_queries, num_candidates), e.g. (1000, 101).
        ground_truth: (num_queries,) column of each query's ground truth; default column 0.
        ks: the K of Rank@K.

    Returns:
        {"R@1": %, "R@5": %, "R@10": %, "mean_rank": float, "num_queries": int}; ranks break
        ties pessimistically (see `rank_of_ground_truth`).
    """
    ranks = rank_of_ground_truth(scores, ground_truth)
    out = {f"R@{k}": v for k, v in recall_at_k(ranks, ks).items()}
    out["mean_rank"] = float(ranks.mean())
    out["num_queries"] = int(len(ranks))
    return out


def matching_metrics_from_scores(positive_scores, negative_scores, threshold: float = 0.0) -> dict[str, float]:
    """TIA matching metrics from the scores of aligned and non-aligned pairs.

    Returns:
        {"accuracy": % of pairs classified right (aligned iff score > threshold),
         "auc": ROC AUC in [0, 1] (Mann-Whitney, ties count one half)}.
    """
    pos = np.asarray(positive_scores, dtype=np.float64).reshape(-1)
    neg = np.asarray(negative_scores, dtype=np.float64).reshape(-1)
    auc = mann_whitney_auc(pos, neg)  # also rejects NaN and empty inputs
    correct = np.count_nonzero(pos > threshold) + np.count_nonzero(neg <= threshold)
    return {"accuracy": float(100.0 * correct / (pos.size + neg.size)), "auc": auc}


# --------------------------------------------------------------------------------------------
# Evaluation with any pair scorer
# --------------------------------------------------------------------------------------------


@dataclass
class FashionRetrievalResult:
    """Result of `evaluate_fashion_retrieval` / `evaluate_pair_scorer`.

    Attributes:
        metrics (`dict[str, float]`): mean over draws. Keys "image_to_text/R@1", ".../R@5",
            ".../R@10", ".../mean_rank", the same for "text_to_image", and "tia/accuracy" (%),
            "tia/auc" (in [0, 1]) when matching is evaluated.
        std (`dict[str, float]`): sample standard deviation over draws (ddof=1; 0 for one draw).
        per_draw (`list[dict[str, float]]`): each draw's metrics.
        num_queries (`dict[str, int]`): queries per direction.
        num_negatives (`int`): negatives per query.
        num_draws (`int`): number of draws.
        num_products (`int`): products (= pairs) in the evaluation set.
        same_subcategory_fraction (`float`): fraction of negatives from the query's own sub-category
            (1.0 when every sub-category has more than `num_negatives` products).
    """

    metrics: dict[str, float]
    std: dict[str, float]
    per_draw: list[dict[str, float]]
    num_queries: dict[str, int]
    num_negatives: int
    num_draws: int
    num_products: int
    same_subcategory_fraction: float
    protocol: dict = field(default_factory=dict)

    def __getitem__(self, key: str) -> float:
        return self.metrics[key]

    def to_dict(self) -> dict[str, float]:
        """Flat dict for logging: every metric, its "<name>_std", and the protocol's sizes."""
        out: dict[str, float] = dict(self.metrics)
        out.update({f"{k}_std": v for k, v in self.std.items()})
        out.update({f"num_queries/{k}": v for k, v in self.num_queries.items()})
        out.update(
            num_negatives=self.num_negatives,
            num_draws=self.num_draws,
            num_products=self.num_products,
            same_subcategory_fraction=self.same_subcategory_fraction,
        )
        return out

    def summary(self) -> str:
        """A small table: Rank@1/5/10 per direction (mean ± std) and the matching metrics."""
        lines = [f"FashionBERT protocol: {self.num_products} products, 1 + {self.num_negatives} candidates, "
                 f"{self.num_draws} draw(s), {100 * self.same_subcategory_fraction:.1f}% same-sub-category negatives"]
        for d in DIRECTIONS:
            if f"{d}/R@1" in self.metrics:
                cells = "  ".join(f"R@{k} {self.metrics[f'{d}/R@{k}']:6.2f} ± {self.std[f'{d}/R@{k}']:.2f}" for k in (1, 5, 10))
                lines.append(f"  {d:<14} ({self.num_queries[d]} queries)  {cells}")
        if "tia/accuracy" in self.metrics:
            lines.append(f"  matching       accuracy {self.metrics['tia/accuracy']:6.2f} ± {self.std['tia/accuracy']:.2f}  "
                         f"AUC {self.metrics['tia/auc']:.4f} ± {self.std['tia/auc']:.4f}")
        return "\n".join(lines)


@dataclass
class ProtocolDraws:
    """The draws of the protocol and the unique (text row, image row) pairs they score, each pair once.

    Attributes:
        draws: per draw, the retrieval protocol of each direction and the matching pairs (or None).
        text_rows, image_rows (`np.ndarray`): (P,) the unique pairs, in the order a scorer scores them.
        cells (`np.ndarray`): position in the unique pairs of every scored cell, in draw order (directions' queries x
            candidates, then the matching pairs' positives and negatives).
        num_products, num_negatives, seed, matching: the protocol's sizes and settings.
    """

    draws: list[tuple[dict[str, RetrievalProtocol], MatchingPairs | None]]
    text_rows: np.ndarray
    image_rows: np.ndarray
    cells: np.ndarray
    num_products: int
    num_negatives: int
    seed: int
    matching: bool


def draw_protocol(
    product_ids: Sequence,
    subcategories: Sequence | None = None,
    num_queries: int = 1000, num_negatives: int = 100, num_draws: int = 3, seed: int = 0,
    directions: Sequence[str] = DIRECTIONS,
    matching: bool = True,
) -> ProtocolDraws:
    """Draws the protocol (module docstring) and lists the unique pairs to score; arguments as `evaluate_pair_scorer`."""
    if num_draws < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws}")
    product_ids = list(product_ids)
    subcategories = None if subcategories is None else list(subcategories)
    draws = []
    text_parts, image_parts = [], []
    for d in range(num_draws):
        protocols = {
            x: build_retrieval_protocol(product_ids, subcategories, num_queries, num_negatives, seed + d, x)
            for x in directions
        }
        pairs = build_matching_pairs(product_ids, subcategories, seed + d) if matching else None
        draws.append((protocols, pairs))
        for protocol in protocols.values():
            t, i = protocol.pair_rows()
            text_parts.append(t.reshape(-1))
            image_parts.append(i.reshape(-1))
        if pairs is not None:
            text_parts += [pairs.positive_text_rows, pairs.negative_text_rows]
            image_parts += [pairs.image_rows, pairs.image_rows]
    num_rows = len(product_ids)
    keys = np.concatenate(text_parts).astype(np.int64) * num_rows + np.concatenate(image_parts)
    unique_keys, cells = np.unique(keys, return_inverse=True)
    return ProtocolDraws(
        draws=draws, text_rows=unique_keys // num_rows, image_rows=unique_keys % num_rows, cells=cells,
        num_products=len(representative_rows(product_ids)), num_negatives=num_negatives, seed=seed, matching=matching,
    )  # fmt: skip


def _blocks(protocol: ProtocolDraws, scores: np.ndarray):
    """Per draw: ({direction: (Q, 1 + negatives) score block}, (positive, negative) matching scores or None)."""
    all_scores, offset = scores[protocol.cells], 0
    for protocols, pairs in protocol.draws:
        blocks = {}
        for x, direction_protocol in protocols.items():
            shape = direction_protocol.candidate_rows.shape
            blocks[x] = all_scores[offset : offset + shape[0] * shape[1]].reshape(shape)
            offset += shape[0] * shape[1]
        matching = None
        if pairs is not None:
            n = len(pairs.image_rows)
            matching = (all_scores[offset : offset + n], all_scores[offset + n : offset + 2 * n])
            offset += 2 * n
        yield protocols, blocks, matching


def protocol_result(
    protocol: ProtocolDraws, scores, matching_threshold: float | None = 0.0, matching_prefix: str = "tia"
) -> FashionRetrievalResult:
    """
    The protocol's metrics from the scores of its unique pairs (`protocol.text_rows`, `protocol.image_rows`).

    Args:
        protocol: from `draw_protocol`.
        scores: (P,) one score per unique pair (higher = better match).
        matching_threshold: score above which a pair counts as "aligned" for the matching accuracy; None reports the
            AUC alone (for scores without a natural threshold, such as a cosine similarity).
        matching_prefix: the matching metrics' key prefix ("tia" for the alignment head: "tia/accuracy", "tia/auc").
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.shape[0] != protocol.text_rows.shape[0]:
        raise ValueError(f"score_pairs returned {scores.shape[0]} scores for {protocol.text_rows.shape[0]} pairs")
    per_draw, num_q = [], {}
    same_total, negatives_total = 0, 0
    for protocols, blocks, matching in _blocks(protocol, scores):
        metrics = {}
        for x, block in blocks.items():
            for name, value in retrieval_metrics_from_scores(block, protocols[x].ground_truth).items():
                if name != "num_queries":
                    metrics[f"{x}/{name}"] = value
            num_q[x] = block.shape[0]
            same_total += int(protocols[x].num_same_subcategory.sum())
            negatives_total += block.shape[0] * (block.shape[1] - 1)
        if matching is not None:
            values = matching_metrics_from_scores(*matching, 0.0 if matching_threshold is None else matching_threshold)
            if matching_threshold is None:
                values.pop("accuracy")
            metrics.update({f"{matching_prefix}/{name}": value for name, value in values.items()})
        per_draw.append(metrics)
    names = list(per_draw[0])
    values = {k: np.array([m[k] for m in per_draw]) for k in names}
    return FashionRetrievalResult(
        metrics={k: float(v.mean()) for k, v in values.items()},
        std={k: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for k, v in values.items()},
        per_draw=per_draw,
        num_queries=num_q,
        num_negatives=protocol.num_negatives,
        num_draws=len(protocol.draws),
        num_products=protocol.num_products,
        same_subcategory_fraction=same_total / negatives_total if negatives_total else float("nan"),
        protocol={"seed": protocol.seed, "directions": list(num_q), "matching": protocol.matching,
                  "matching_threshold": matching_threshold, "num_unique_pairs": int(protocol.text_rows.shape[0])},
    )  # fmt: skip


def mean_reciprocal_rank(protocol: ProtocolDraws, scores) -> float:
    """The mean over draws and directions of the mean reciprocal rank of the ground truth (a smoother criterion
    than Rank@1 for choosing between scorers on a few hundred queries)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    values = [
        float(np.mean(1.0 / rank_of_ground_truth(block, protocols[x].ground_truth)))
        for protocols, blocks, _ in _blocks(protocol, scores)
        for x, block in blocks.items()
    ]
    return float(np.mean(values))


def listwise_log_likelihood(protocol: ProtocolDraws, scores) -> float:
    """
    The mean log-probability of each query's ground truth under a softmax over its candidates' scores, at the one
    temperature (shared by all queries) that makes it largest: how well the scores rank, graded by their margins
    rather than by ranks alone, and blind to the scores' overall scale. Smoother than Rank@1 or the reciprocal rank,
    so it tells two scorers apart on fewer queries (the criterion of `choose_fusion_weight`).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    blocks = [block for _, direction_blocks, _ in _blocks(protocol, scores) for block in direction_blocks.values()]
    matrix = np.concatenate([block - block[:, :1] for block in blocks])  # each candidate's margin over the truth

    def log_likelihood(log_temperature: float) -> float:
        scaled = np.exp(log_temperature) * matrix
        top = scaled.max(axis=1, keepdims=True)
        return float(-np.mean(top[:, 0] + np.log(np.exp(scaled - top).sum(axis=1))))

    # The log-likelihood is concave in the temperature; golden-section search over its logarithm.
    low, high = -12.0, 12.0
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    for _ in range(80):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if log_likelihood(a) < log_likelihood(b):
            low = a
        else:
            high = b
    return log_likelihood((low + high) / 2.0)


def evaluate_pair_scorer(
    score_pairs: Callable[[np.ndarray, np.ndarray], np.ndarray],
    product_ids: Sequence,
    subcategories: Sequence | None = None,
    num_queries: int = 1000, num_negatives: int = 100, num_draws: int = 3, seed: int = 0,
    directions: Sequence[str] = DIRECTIONS,
    matching: bool = True,
    matching_threshold: float = 0.0,
) -> FashionRetrievalResult:
    """Runs the protocol with any scorer of (text row, image row) pairs.

    Args:
        score_pairs: called once with `(text_rows, image_rows)`, two (P,) int arrays of dataset rows
            holding every unique pair of all draws and directions; returns (P,) scores (higher =
            better match).
        product_ids, subcategories: per dataset row (see `build_retrieval_protocol`).
        num_queries, num_negatives, num_draws, seed: protocol sizes and seeding (module docstring).
        directions: which retrieval directions to evaluate.
        matching: also compute TIA accuracy and AUC.
        matching_threshold: score above which a pair is classified "aligned".
    """
    protocol = draw_protocol(product_ids, subcategories, num_queries, num_negatives, num_draws, seed, directions, matching)
    scores = np.asarray(score_pairs(protocol.text_rows, protocol.image_rows), dtype=np.float64).reshape(-1)
    return protocol_result(protocol, scores, matching_threshold)


# --------------------------------------------------------------------------------------------
# Evaluation of a FashionBERT model
# --------------------------------------------------------------------------------------------


def _column(data, name: str):
    """A column of a `datasets.Dataset` or a mapping, or None when absent."""
    names = data.column_names if hasattr(data, "column_names") else list(data.keys())
    return data[name] if name in names else None


def _has(data, name: str) -> bool:
    names = data.column_names if hasattr(data, "column_names") else list(data.keys())
    return name in names


def _take(data, name: str, rows: np.ndarray):
    """Values of column `name` at `rows` (a list, or a tensor/array for array-like mappings)."""
    if hasattr(data, "select"):  # datasets.Dataset: decode only these rows
        subset = data.select(rows.tolist())
        if name in ("patch_features", "pixel_values"):
            return subset.with_format("torch", columns=[name])[name]
        return list(subset[name])
    column = data[name]
    if hasattr(column, "index_select") or isinstance(column, np.ndarray):
        return column[rows]
    return [column[int(r)] for r in rows]


def _as_tensor(values, dtype=None):
    import torch

    if isinstance(values, torch.Tensor):
        return values if dtype is None else values.to(dtype)
    if isinstance(values, np.ndarray):
        return torch.as_tensor(values, dtype=dtype)
    # A list of equal-length rows (a datasets column) or of tensors.
    if len(values) and isinstance(values[0], torch.Tensor):
        return torch.stack(list(values)).to(dtype) if dtype is not None else torch.stack(list(values))
    return torch.as_tensor(np.asarray(values), dtype=dtype)


def _pad(sequences: list, value: int = 0):
    import torch

    length = max(len(s) for s in sequences)
    out = torch.full((len(sequences), length), value, dtype=torch.long)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return out


def _encode_texts(data, rows: np.ndarray, processor, max_text_length: int | None) -> dict:
    """input_ids / attention_mask (/ token_type_ids) for `rows`, from pre-tokenized columns or the processor."""
    import torch

    if _has(data, "input_ids"):
        ids = _take(data, "input_ids", rows)
        if isinstance(ids, torch.Tensor) or isinstance(ids, np.ndarray):
            out = {"input_ids": _as_tensor(ids, torch.long)}
        else:
            out = {"input_ids": _pad(list(ids))}
        if _has(data, "attention_mask"):
            mask = _take(data, "attention_mask", rows)
            out["attention_mask"] = (_as_tensor(mask, torch.long) if not isinstance(mask, list) else _pad(mask))
        else:
            lengths = torch.as_tensor([len(s) for s in ids]) if isinstance(ids, list) else None
            mask = torch.ones_like(out["input_ids"])
            if lengths is not None:
                mask = (torch.arange(mask.shape[1])[None, :] < lengths[:, None]).long()
            out["attention_mask"] = mask
        if _has(data, "token_type_ids"):
            tt = _take(data, "token_type_ids", rows)
            out["token_type_ids"] = _as_tensor(tt, torch.long) if not isinstance(tt, list) else _pad(tt)
        return out
    if not _has(data, "text"):
        raise ValueError("evaluation data needs a 'text' column (with a processor) or an 'input_ids' column")
    if processor is None:
        raise ValueError("evaluation data has raw 'text': pass the FashionBERT processor (or its tokenizer)")
    texts = [str(t) for t in _take(data, "text", rows)]
    kwargs = dict(padding=True, truncation=True, return_tensors="pt")
    if max_text_length is not None:
        kwargs["max_length"] = max_text_length
    # Call the processor itself when it is callable: it applies its own max_text_length default.
    if callable(processor):
        encoded = processor(text=texts, **kwargs)
    else:
        encoded = processor.tokenizer(texts, **kwargs)
    return {k: encoded[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded}


def _patch_feature_fn(model) -> Callable:
    if hasattr(model, "get_patch_features"):
        return model.get_patch_features
    base = getattr(model, "base_model", None)
    if base is not None and hasattr(base, "get_patch_features"):
        return base.get_patch_features
    raise ValueError("the model has no get_patch_features (nor its base_model): is it a FashionBERT model?")


def _encode_images(model, data, rows: np.ndarray, processor, batch_size: int, device, show_progress: bool):
    """Patch features (len(rows), num_patches, dim) on the CPU: from a 'patch_features' column, or
    get_patch_features on 'pixel_values' / processed 'image' -- once per image, in batches."""
    import torch
    from tqdm.auto import tqdm

    if _has(data, "patch_features"):
        return _as_tensor(_take(data, "patch_features", rows), torch.float32)
    if _has(data, "pixel_values"):
        source = "pixel_values"
    elif _has(data, "image"):
        if processor is None:
            raise ValueError("evaluation data has raw 'image': pass the FashionBERT processor (or image processor)")
        source = "image"
    else:
        raise ValueError("evaluation data needs an 'image', 'pixel_values' or 'patch_features' column")
    encode = _patch_feature_fn(model)
    chunks = []
    for start in tqdm(range(0, len(rows), batch_size), desc="Patch features", disable=not show_progress, unit="batch"):
        batch_rows = rows[start: start + batch_size]
        if source == "pixel_values":
            pixels = _as_tensor(_take(data, "pixel_values", batch_rows), torch.float32)
        else:
            images = [im.convert("RGB") if hasattr(im, "convert") else im for im in _take(data, "image", batch_rows)]
            if callable(processor):
                pixels = processor(images=images, return_tensors="pt")["pixel_values"]
            else:
                pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            chunks.append(encode(pixels.to(device)).float().cpu())
    return torch.cat(chunks)


def _model_device(model, device):
    import torch

    if device is not None:
        return torch.device(device)
    if getattr(model, "device", None) is not None:
        return model.device
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _dual_encoder(model):
    """The model's encoder with trained dual-encoder heads (`contrastive_projection_dim`), or None."""
    base = getattr(model, "base_model", None)
    config = getattr(model, "config", None)
    if getattr(config, "contrastive_projection_dim", None) is None or not hasattr(base, "get_text_embeddings"):
        return None
    return base


def score_protocol_pairs(
    model, eval_data, text_rows: np.ndarray, image_rows: np.ndarray, processor=None, max_text_length: int | None = None,
    batch_size: int = 64, device=None, show_progress: bool = True, precision: str = "auto",
) -> dict[str, np.ndarray]:
    """
    Scores (text row, image row) pairs of `eval_data` with a FashionBERT retrieval model.

    Returns:
        `{"cross_encoder": (P,) aligned-class log-odds}`, plus `"first_stage"`: (P,) cosine similarities of the
        dual-encoder embeddings (`get_text_embeddings` / `get_image_embeddings`) when the model has the heads. Every
        text and image is encoded once, pairs are scored in chunks sorted by text length (each cut to its longest text),
        under `precision` (`xmodal.precision.scoring_autocast`: "auto" = bf16 where the device computes it natively).
    """
    from xmodal.precision import scoring_autocast

    device = _model_device(model, device)
    with scoring_autocast(precision, device):
        return _score_pairs(model, eval_data, text_rows, image_rows, processor, max_text_length, batch_size, device, show_progress)


def _score_pairs(
    model, eval_data, text_rows: np.ndarray, image_rows: np.ndarray, processor, max_text_length: int | None,
    batch_size: int, device, show_progress: bool,
) -> dict[str, np.ndarray]:
    import torch
    from tqdm.auto import tqdm

    text_ids, text_local = np.unique(text_rows, return_inverse=True)
    image_ids, image_local = np.unique(image_rows, return_inverse=True)
    texts = _encode_texts(eval_data, text_ids, processor, max_text_length)
    features = _encode_images(model, eval_data, image_ids, processor, batch_size, device, show_progress)
    lengths = texts["attention_mask"].sum(1).numpy()
    order = np.argsort(lengths[text_local], kind="stable")
    cross = np.empty(len(text_rows), dtype=np.float64)
    chunk = batch_size * 8
    with tqdm(total=len(order), desc="Scoring pairs", disable=not show_progress, unit="pair") as bar:
        for start in range(0, len(order), chunk):
            idx = order[start: start + chunk]
            t_ids, t_loc = np.unique(text_local[idx], return_inverse=True)
            i_ids, i_loc = np.unique(image_local[idx], return_inverse=True)
            batch = _trimmed(texts, torch.as_tensor(t_ids), device)
            with torch.no_grad():
                s = model.score_pairs(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    patch_features=features.index_select(0, torch.as_tensor(i_ids)).to(device),
                    text_indices=torch.as_tensor(t_loc, device=device),
                    image_indices=torch.as_tensor(i_loc, device=device),
                    token_type_ids=batch.get("token_type_ids"),
                    batch_size=batch_size,
                    show_progress=False,
                )
            cross[idx] = s.detach().float().cpu().numpy().reshape(-1)
            bar.update(len(idx))
    scores = {"cross_encoder": cross}
    encoder = _dual_encoder(model)
    if encoder is not None:
        with torch.no_grad():
            text_vectors = torch.cat([
                encoder.get_text_embeddings(**_trimmed(texts, torch.arange(start, min(start + batch_size, len(text_ids))), device)).float().cpu()
                for start in range(0, len(text_ids), batch_size)
            ])  # fmt: skip
            image_vectors = torch.cat([
                encoder.get_image_embeddings(patch_features=features[start: start + batch_size].to(device)).float().cpu()
                for start in range(0, len(image_ids), batch_size)
            ])  # fmt: skip
        similarity = (text_vectors[torch.as_tensor(text_local)] * image_vectors[torch.as_tensor(image_local)]).sum(-1)
        scores["first_stage"] = similarity.double().numpy()
    return scores


def _trimmed(texts: dict, rows, device) -> dict:
    """The encoded texts at `rows`, without the columns that are padding in all of them (either padding side)."""
    import torch

    mask = texts["attention_mask"].index_select(0, rows)
    keep = torch.nonzero(mask.any(dim=0)).flatten()
    return {k: v.index_select(0, rows).index_select(1, keep).to(device) for k, v in texts.items()}


def _fused(model, scores: dict[str, np.ndarray], weight: float) -> np.ndarray:
    import torch

    fused = model.base_model.fuse_scores(
        torch.as_tensor(scores["cross_encoder"]), torch.as_tensor(scores["first_stage"]), weight=weight
    )
    return fused.double().cpu().numpy()


def _add_scorer(result: FashionRetrievalResult, other: FashionRetrievalResult, prefix: str) -> None:
    """Adds `other`'s metrics to `result` under `prefix/` (its matching metrics already carry the prefix)."""

    def named(key: str) -> str:
        return key if key.startswith(f"{prefix}/") else f"{prefix}/{key}"

    result.metrics.update({named(k): v for k, v in other.metrics.items()})
    result.std.update({named(k): v for k, v in other.std.items()})
    for mine, theirs in zip(result.per_draw, other.per_draw):
        mine.update({named(k): v for k, v in theirs.items()})


def evaluate_fashion_retrieval(
    model,
    eval_data,
    processor=None,
    num_queries: int = 1000, num_negatives: int = 100, num_draws: int = 3, seed: int = 0,
    batch_size: int = 64,
    directions: Sequence[str] = DIRECTIONS,
    matching: bool = True,
    matching_threshold: float = 0.0,
    max_text_length: int | None = None,
    product_id_column: str = "product_id",
    subcategory_column: str = "subcategory",
    device=None,
    show_progress: bool = True,
    precision: str = "auto",
) -> FashionRetrievalResult:
    """Evaluates a FashionBERT retrieval model with the paper's protocol (module docstring).

    The paper's score is the cross-encoder's (the alignment head's log-odds): the unprefixed keys
    ("image_to_text/R@1", ..., "tia/accuracy", "tia/auc"). A model with dual-encoder heads
    (`config.contrastive_projection_dim`) is also scored on the same pairs by its first stage alone, the cosine of
    its text and image embeddings ("first_stage/image_to_text/R@1", ..., "first_stage/auc"), and, when its config has
    a `fusion_weight`, by the score the product ranks with (`fuse_scores`: "fused/image_to_text/R@1", ...,
    "fused/auc"). Accuracy needs a threshold, so only the cross-encoder reports it.

    Args:
        model: a `FashionBertForImageTextRetrieval` (or any object with `score_pairs` and
            `get_patch_features` on itself or its `base_model`).
        eval_data: a `datasets.Dataset` or a mapping of columns. Needs `product_id_column`
            (optional `subcategory_column`; missing = unknown), text as "text" (with `processor`)
            or pre-tokenized "input_ids" (+ "attention_mask", "token_type_ids"), and images as
            "image" (with `processor`), "pixel_values", or cached "patch_features".
        processor: the FashionBERT processor, needed for raw "text" / "image" columns: called as
            `processor(text=...)` / `processor(images=...)`, or, when not callable, through its
            `tokenizer` and `image_processor` attributes.
        num_queries, num_negatives, num_draws, seed: protocol sizes and seeding.
        batch_size: pairs per `score_pairs` batch and images per `get_patch_features` batch.
        directions, matching, matching_threshold: what to evaluate (see `evaluate_pair_scorer`).
        max_text_length: truncate captions to this many tokens (None: the tokenizer's maximum).
        product_id_column, subcategory_column: column names in `eval_data`.
        device: where to run the model (default: the model's device).
        show_progress: tqdm bars for patch features and pair scoring.
        precision: "auto" (bf16 autocast where the device computes bf16 natively, float32 elsewhere), "bf16" or
            "float32" (`xmodal.precision`).

    Only the rows that take part (one representative row per product) are encoded; every image's
    patch features are computed once and every unique pair is scored once.
    """
    protocol, scores = _score_protocol(
        model, eval_data, processor, num_queries, num_negatives, num_draws, seed, batch_size, directions, matching,
        max_text_length, product_id_column, subcategory_column, device, show_progress, precision,
    )  # fmt: skip
    result = protocol_result(protocol, scores["cross_encoder"], matching_threshold)
    if "first_stage" in scores:
        _add_scorer(result, protocol_result(protocol, scores["first_stage"], None, "first_stage"), "first_stage")
        weight = model.config.fusion_weight
        if weight is not None:
            _add_scorer(result, protocol_result(protocol, _fused(model, scores, weight), None, "fused"), "fused")
            result.protocol["fusion_weight"] = weight
    return result


# Candidate fusion weights `choose_fusion_weight` tries: the cross-encoder's share, in steps of 0.05.
FUSION_WEIGHTS = tuple(round(0.05 * k, 2) for k in range(21))


def choose_fusion_weight(
    model,
    validation_data,
    processor=None,
    num_queries: int = 1000, num_negatives: int = 100, seed: int = 0,
    batch_size: int = 64,
    weights: Sequence[float] = FUSION_WEIGHTS,
    max_text_length: int | None = None,
    product_id_column: str = "product_id",
    subcategory_column: str = "subcategory",
    device=None,
    show_progress: bool = True,
    precision: str = "auto",
) -> tuple[float, dict[float, dict[str, float]]]:
    """
    The fusion weight (`FashionBertConfig.fusion_weight`, the cross-encoder's share) that ranks best on a
    validation split: one draw of the retrieval protocol on `validation_data` (both directions), each candidate
    weight graded by the listwise log-likelihood of the ground truth (`listwise_log_likelihood`: margins, not only
    ranks, so a few hundred queries tell the weights apart with less noise than Rank@1 or the reciprocal rank, which
    are reported beside it); the smallest weight wins a tie (0 = the first stage alone, the cheaper ranking). Never
    pass the test split: the weight is part of the model. Pairs are scored under `precision` (as
    `evaluate_fashion_retrieval`).

    Returns:
        `(weight, {weight: {"log_likelihood", "mrr", "image_to_text/R@1", "text_to_image/R@1"}})`.

    Raises:
        ValueError: the model has no dual-encoder heads, or `weights` is empty or outside [0, 1].
    """
    if _dual_encoder(model) is None:
        raise ValueError("choosing a fusion weight needs a model with dual-encoder heads (`contrastive_projection_dim`).")
    if not weights or any(not 0.0 <= w <= 1.0 for w in weights):
        raise ValueError(f"`weights` must be a non-empty list of numbers in [0, 1], got {list(weights)}.")
    protocol, scores = _score_protocol(
        model, validation_data, processor, num_queries, num_negatives, 1, seed, batch_size, DIRECTIONS, False,
        max_text_length, product_id_column, subcategory_column, device, show_progress, precision,
    )  # fmt: skip
    table = {}
    for weight in weights:
        fused = _fused(model, scores, float(weight))
        ranks = protocol_result(protocol, fused, None).metrics
        table[float(weight)] = {
            "log_likelihood": listwise_log_likelihood(protocol, fused),
            "mrr": mean_reciprocal_rank(protocol, fused),
            **{f"{d}/R@1": ranks[f"{d}/R@1"] for d in DIRECTIONS},
        }
    best = max(row["log_likelihood"] for row in table.values())
    return min(w for w, row in table.items() if row["log_likelihood"] >= best - 1e-12), table


def _score_protocol(
    model, eval_data, processor, num_queries, num_negatives, num_draws, seed, batch_size, directions, matching,
    max_text_length, product_id_column, subcategory_column, device, show_progress, precision,
) -> tuple[ProtocolDraws, dict[str, np.ndarray]]:
    """Draws the protocol on `eval_data` and scores its unique pairs (`score_protocol_pairs`), in eval mode."""
    product_ids = _column(eval_data, product_id_column)
    if product_ids is None:
        raise ValueError(f"evaluation data has no {product_id_column!r} column (product_id_column)")
    subcategories = _column(eval_data, subcategory_column)
    protocol = draw_protocol(
        list(product_ids), None if subcategories is None else list(subcategories), num_queries, num_negatives,
        num_draws, seed, directions, matching,
    )  # fmt: skip
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        scores = score_protocol_pairs(
            model, eval_data, protocol.text_rows, protocol.image_rows, processor, max_text_length, batch_size, device,
            show_progress, precision,
        )  # fmt: skip
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
    return protocol, scores
