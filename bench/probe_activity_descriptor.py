"""Does the offline MAP-IVR feature extractor carry the activity test bed's factors? Linear probes say.

Every factor (shape, colour, texture, scene, motion, direction, speed) is drawn independently, clips and query images
are rendered, encoded from their pixels by `MapIvrMediaEncoder` (descriptor backend), and a logistic regression per
factor is trained on 70 % and scored on the held-out 30 %, next to the majority-class chance level.

    python bench/probe_activity_descriptor.py     # writes bench/results/probe_activity_descriptor.json
"""

from xmodal.benchmarking import add_output_argument, bench_parser, write_json
from xmodal.data.activity_synthetic import make_factor_dataset, probe_factors


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--num_samples", type=int, default=800, help="Rendered clip/image pairs.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the factors, renders and probe split.")
    add_output_argument(parser, "probe_activity_descriptor")
    args = parser.parse_args()

    dataset = make_factor_dataset(num_samples=args.num_samples, seed=args.seed)
    result = {
        column: probe_factors(dataset, feature_column=column, seed=args.seed)
        for column in ("video_features", "image_features")
    }
    write_json(args.output, result)
    factors = list(result["video_features"])
    print(f"{'factor':<10} {'video':>7} {'image':>7} {'chance':>7}")
    for factor in factors:
        video, image = result["video_features"][factor], result["image_features"][factor]
        print(f"{factor:<10} {video['accuracy']:7.3f} {image['accuracy']:7.3f} {video['chance']:7.3f}")


if __name__ == "__main__":
    main()
