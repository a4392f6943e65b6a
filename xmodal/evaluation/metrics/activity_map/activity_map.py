# Copyright 2025 The xmodal authors. Licensed under the Apache License, Version 2.0.
"""MAP-IVR image-to-video retrieval mAP@K as an `evaluate` metric (load offline with `evaluate.load(<this folder>)`)."""

import evaluate
import numpy as np

from xmodal.evaluation.activity_retrieval import mean_average_precision_at_k
from xmodal.evaluation.metric_modules import as_score_rows, score_rows_metric_info


_DESCRIPTION = """
mAP@K of activity image-to-video retrieval as reported by APIVR (AAAI 2020) and MAP-IVR (AAAI 2021): each
image query ranks the whole test video gallery by distance (ascending; ties broken by gallery index), a video
is relevant when it has the query's activity class, and

    AP@K = (1 / H_K) * sum of precision@r over the ranks r <= K at which a relevant video appears,

with H_K the number of relevant videos in the top K (0 when there is none). mAP@K is the mean over queries.
`normalization="relevant"` divides by min(K, number of relevant videos in the gallery) instead. This module
wraps `xmodal.evaluation.activity_retrieval.mean_average_precision_at_k`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): one row of distances to every gallery video per query
        (lower = closer), e.g. a row of `MapIvrScores.s_all`.
    references (`list` of `int`): the activity class of each query.
    gallery_labels (`list` of `int`): the activity class of each gallery video (same order as the rows).
    ks (`list` of `int`, defaults to `[10, 20, 50, 100]`): the K of mAP@K.
    normalization (`str`, defaults to `"hits"`): `"hits"` (APIVR) or `"relevant"`.

Returns:
    `mAP@10`, `mAP@20`, `mAP@50`, `mAP@100` (in [0, 1]), `num_queries`, `num_gallery`.

Examples:
    >>> metric = evaluate.load("xmodal/evaluation/metrics/activity_map")
    >>> metric.compute(predictions=[[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]], references=[0, 1],
    ...                gallery_labels=[0, 1, 0], ks=[1, 2])
    {'mAP@1': 0.5, 'mAP@2': 0.75, 'num_queries': 2, 'num_gallery': 3}
"""

_CITATION = """
@inproceedings{liu2021mapivr,
  title={Activity Image-to-Video Retrieval by Disentangling Appearance and Motion},
  author={Liu, Liu and Li, Jiangtong and Niu, Li and Xu, Ruicong and Zhang, Liqing},
  booktitle={AAAI},
  pages={2145--2153},
  year={2021}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ActivityMap(evaluate.Metric):
    def _info(self):
        return score_rows_metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, references, gallery_labels=None, ks=(10, 20, 50, 100), normalization="hits"):
        if gallery_labels is None:
            raise ValueError("activity_map needs gallery_labels: the class of each gallery video")
        distances = as_score_rows(predictions, "distances to the same gallery")
        result = mean_average_precision_at_k(
            distances, np.asarray(references), np.asarray(gallery_labels), ks=tuple(ks), normalization=normalization
        )
        return {key: value for key, value in result.items() if key != "per_query"}
