# Copyright 2025 The xmodal authors. Licensed under the Apache License, Version 2.0.
"""What the offline `evaluate` metric modules under `metrics/` share.

Each module is a script loaded by path (`evaluate.load("xmodal/evaluation/metrics/<name>")`), which `evaluate` copies
into its own cache before importing it, so the modules cannot import each other: they import this module from the
installed `xmodal` package instead, as they import the metric functions themselves.
"""

from __future__ import annotations

import numpy as np


__all__ = ["score_rows_metric_info", "as_score_rows"]


def score_rows_metric_info(description: str, citation: str, inputs_description: str, **kwargs):
    """The `evaluate.MetricInfo` of a metric whose inputs are, per query, one row of floats (`predictions`: its scores
    of, or distances to, the candidates) and one integer (`references`). `kwargs` go to `MetricInfo` as well."""
    import datasets
    import evaluate

    return evaluate.MetricInfo(
        description=description,
        citation=citation,
        inputs_description=inputs_description,
        features=datasets.Features(
            {
                "predictions": datasets.Sequence(datasets.Value("float64")),
                "references": datasets.Value("int64"),
            }
        ),
        **kwargs,
    )


def as_score_rows(predictions, rows_are: str) -> np.ndarray:
    """`predictions` as a 2-D float64 array; a ValueError saying "every prediction must be a row of `rows_are`" if
    the rows do not make one."""
    rows = np.asarray(predictions, dtype=np.float64)
    if rows.ndim != 2:
        raise ValueError(f"every prediction must be a row of {rows_are}")
    return rows
