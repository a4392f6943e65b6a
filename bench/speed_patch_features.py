"""Patch feature extraction speed: `patch_feature_mode="grid"` (one ResNet pass per image) vs `"crop"` (the paper's
64 patches, each resized to 224x224 and run through the ResNet on its own).

Both modes use the same ResNet-50 (transformers' `ResNetModel`, random weights: only speed is measured) inside
`FashionBertModel.get_patch_features`, on 256x256 images cut into 8x8 patches. The two modes are timed in turns
(grid, crop, grid, crop, ...) in one process and the images/s are medians over `--repeats` rounds; crop is slow, so
it gets only a few images per round. Goal (issue 7): grid >= 30x crop.

    python bench/speed_patch_features.py          # writes bench/results/speed_patch_features.json
    python bench/speed_patch_features.py --quick  # a few seconds (64-pixel images, 32-pixel crops)
"""

import statistics
import time

import torch

from xmodal.benchmarking import add_speed_arguments, bench_parser, run_environment, start_speed_run, write_json
from xmodal.fashionbert import FashionBertConfig, FashionBertModel


# The smallest text side a FashionBERT can have: only `get_patch_features` is timed.
MINIMAL_TEXT_SIDE = dict(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


def build(mode: str, image_size: int, patch_crop_size: int) -> FashionBertModel:
    """A FashionBERT with a ResNet-50 patch encoder (8x8 patches) and a minimal text side."""
    config = FashionBertConfig(image_size=image_size, patch_grid=8, patch_encoder_type="resnet", patch_feature_mode=mode,
                               patch_crop_size=patch_crop_size, **MINIMAL_TEXT_SIDE)
    return FashionBertModel(config).eval()


def images_per_second(model: FashionBertModel, pixel_values: torch.Tensor) -> float:
    start = time.perf_counter()
    model.get_patch_features(pixel_values)
    return pixel_values.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--patch_crop_size", type=int, default=224)
    parser.add_argument("--grid_images", type=int, default=8, help="Images per grid measurement (one batch).")
    parser.add_argument("--crop_images", type=int, default=1, help="Images per crop measurement (64 crops each).")
    parser.add_argument("--repeats", type=int, default=3, help="Timed rounds (each mode once per round).")
    add_speed_arguments(parser, "speed_patch_features", quick_help="Seconds-long run: 64-pixel images, 32-pixel crops.")
    args = parser.parse_args()
    if args.quick:
        args.image_size, args.patch_crop_size, args.grid_images, args.repeats = 64, 32, 4, 2
    load_before = start_speed_run(args)

    grid = build("grid", args.image_size, args.patch_crop_size)
    crop = build("crop", args.image_size, args.patch_crop_size)
    crop.patch_encoder.load_state_dict(grid.patch_encoder.state_dict())  # the very same CNN
    images = torch.randn(max(args.grid_images, args.crop_images), 3, args.image_size, args.image_size)
    grid_batch, crop_batch = images[: args.grid_images], images[: args.crop_images]
    shapes = {"grid": tuple(grid.get_patch_features(grid_batch[:1]).shape),  # also a warm-up
              "crop": tuple(crop.get_patch_features(crop_batch[:1]).shape)}

    rates = {"grid": [], "crop": []}
    for _ in range(args.repeats):
        rates["grid"].append(images_per_second(grid, grid_batch))
        rates["crop"].append(images_per_second(crop, crop_batch))
    ratios = [g / c for g, c in zip(rates["grid"], rates["crop"])]
    ratio = statistics.median(ratios)
    result = {
        "config": {"image_size": args.image_size, "patch_grid": 8, "patch_crop_size": args.patch_crop_size,
                   "patch_encoder": "ResNet-50 (transformers ResNetConfig defaults, random weights)",
                   "grid_images_per_measurement": args.grid_images,
                   "crop_images_per_measurement": args.crop_images, "repeats": args.repeats, "quick": args.quick},
        "feature_shape_per_image": {k: list(v[1:]) for k, v in shapes.items()},
        "images_per_second": {k: statistics.median(v) for k, v in rates.items()},
        "images_per_second_all": rates,
        "ratio_grid_over_crop": ratio,
        "ratio_grid_over_crop_all": ratios,
        "goal": "grid >= 30x crop images/s",
        "goal_met": ratio >= 30,
        "environment": run_environment(load_before),
    }
    write_json(args.output, result)
    print(f"ResNet-50 patch features, {args.image_size}px images, 8x8 patches, crops at {args.patch_crop_size}px:")
    for mode in ("grid", "crop"):
        print(f"  {mode:<5} {result['images_per_second'][mode]:9.3f} images/s   features {list(shapes[mode][1:])}")
    print(f"grid / crop: {ratio:.1f}x (goal >= 30x)")


if __name__ == "__main__":
    main()
