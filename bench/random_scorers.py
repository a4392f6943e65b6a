"""Chance level of both protocols on the default synthetic test beds (the floor every table is read against).

    python bench/random_scorers.py            # writes bench/results/random_scorers.json and prints a table
"""

import numpy as np

from xmodal.benchmarking import add_output_argument, bench_parser, write_json
from xmodal.data.activity_synthetic import make_activity_dataset
from xmodal.data.fashion_synthetic import make_fashion_dataset
from xmodal.evaluation.activity_retrieval import mean_average_precision_at_k
from xmodal.evaluation.fashion_retrieval import evaluate_pair_scorer


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--seed", type=int, default=42, help="Seed of the test beds (train.py's default).")
    parser.add_argument("--draws", type=int, default=5, help="Random scorers / protocol draws averaged.")
    add_output_argument(parser, "random_scorers", help="Where the JSON result goes.")
    args = parser.parse_args()

    fashion = make_fashion_dataset(num_products=1100, views_per_product=3, image_size=32, seed=args.seed)["test"]
    rng = np.random.default_rng(args.seed)
    random_scores = lambda texts, images: rng.standard_normal(len(texts))  # noqa: E731
    fashion_result = evaluate_pair_scorer(
        random_scores, fashion["product_id"], fashion["subcategory"], num_draws=args.draws, seed=args.seed
    )

    activity = make_activity_dataset(num_videos_per_class=40, seed=args.seed)["test"]
    labels = np.asarray(activity["label"])
    queries = np.asarray(activity["is_query"], dtype=bool)
    per_draw = [
        mean_average_precision_at_k(rng.random((int(queries.sum()), len(labels))), labels[queries], labels)
        for _ in range(args.draws)
    ]
    activity_result = {key: float(np.mean([draw[key] for draw in per_draw])) for key in per_draw[0]}

    result = {"fashion": fashion_result.metrics, "fashion_num_queries": fashion_result.num_queries, "activity": activity_result}
    write_json(args.output, result)
    print(f"fashion test bed ({len(set(fashion['product_id']))} test products), random scorer, {args.draws} draws:")
    for key, value in sorted(fashion_result.metrics.items()):
        print(f"  {key:<24} {value:8.3f}")
    print(f"activity test bed ({len(labels)} test videos, {int(queries.sum())} queries), random ranking:")
    for key, value in sorted(activity_result.items()):
        print(f"  {key:<24} {value:8.4f}")


if __name__ == "__main__":
    main()
