# Copyright 2025 The xmodal authors. Licensed under the Apache License, Version 2.0.
"""FashionBERT retrieval Rank@K as an `evaluate` metric (load offline with `evaluate.load(<this folder>)`)."""

import evaluate
import numpy as np

from xmodal.evaluation.fashion_retrieval import retrieval_metrics_from_scores
from xmodal.evaluation.metric_modules import as_score_rows, score_rows_metric_info


_DESCRIPTION = """
Rank@K of FashionBERT's cross-modal retrieval protocol (Gao et al., SIGIR 2020): each query is ranked
against its ground truth and (usually) 100 negatives from other products of the same sub-category;
Rank@K is the percentage of queries whose ground truth is within the top K. Ties are broken
pessimistically (a negative scoring exactly the ground truth's score ranks above it). Building the
candidate lists and scoring them is done by `xmodal.evaluation.fashion_retrieval`
(`build_retrieval_protocol`, `evaluate_fashion_retrieval`); this module scores a finished score matrix.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): one row of candidate scores per query (higher = better
        match), e.g. 101 scores for 1 ground truth + 100 negatives. All rows have the same length.
    references (`list` of `int`): position of the ground truth in each row (0 when it comes first).
    ks (`list` of `int`, defaults to `[1, 5, 10]`): the K of Rank@K.

Returns:
    `R@1`, `R@5`, `R@10` (percent), `mean_rank` (1 = best), `num_queries`.

Examples:
    >>> metric = evaluate.load("xmodal/evaluation/metrics/fashion_retrieval")
    >>> metric.compute(predictions=[[0.9, 0.1, 0.2], [0.1, 0.5, 0.3]], references=[0, 0], ks=[1, 2])
    {'R@1': 50.0, 'R@2': 50.0, 'mean_rank': 2.0, 'num_queries': 2}
"""

_CITATION = """
@inproceedings{gao2020fashionbert,
  title={FashionBERT: Text and Image Matching with Adaptive Loss for Cross-modal Retrieval},
  author={Gao, Dehong and Jin, Linbo and Chen, Ben and Qiu, Minghui and Li, Peng and Wei, Yi and Hu, Yi and Wang, Hao},
  booktitle={SIGIR},
  year={2020}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FashionRetrieval(evaluate.Metric):
    def _info(self):
        return score_rows_metric_info(
            _DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION, reference_urls=["https://arxiv.org/abs/2005.09801"]
        )

    def _compute(self, predictions, references, ks=(1, 5, 10)):
        scores = as_score_rows(predictions, "candidate scores of the same length")
        return retrieval_metrics_from_scores(scores, np.asarray(references, dtype=np.int64), ks=tuple(ks))
