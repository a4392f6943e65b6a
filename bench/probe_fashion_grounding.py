"""Does a trained FashionBERT look at the image? Colour-word MLM with the right image vs another product's image.

Every synthetic caption names the garment's colours, and only the image says which they are. Each colour word of a
test caption is masked and predicted twice: with the caption's own image and with the image of another test product
of a different main colour. A model that grounds colours in the patches predicts them better with the right image;
a model that only uses the caption's wording scores the same both ways (its text prior). Two accuracies per image:
the argmax over the whole vocabulary, and the argmax among the colour words only (chance: one over their number).
And the alignment head's view: with the caption's own image, does it score the true caption above the same caption
with every colour word swapped for another colour (chance 0.5; only the image can tell them apart)?

    python bench/probe_fashion_grounding.py --model outputs/fashionbert/final
    # writes bench/results/probe_fashion_grounding.json
"""

import json

import numpy as np
import torch

from xmodal import FashionBertForPreTraining, FashionBertProcessor
from xmodal.benchmarking import add_output_argument, bench_parser, write_json
from xmodal.data.fashion_synthetic import COLOR_PALETTE, make_fashion_dataset
from xmodal.evaluation.fashion_retrieval import representative_rows


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--model", required=True, help="A FashionBERT folder written by train.py (its final/ folder).")
    parser.add_argument("--seed", type=int, default=42, help="Seed of the synthetic test bed (train.py's default).")
    parser.add_argument("--num_products", type=int, default=1100, help="Test bed size (train.py's default).")
    parser.add_argument("--max_rows", type=int, default=200, help="Test rows probed.")
    add_output_argument(parser, "probe_fashion_grounding", help="Where the JSON goes.")
    args = parser.parse_args()

    model = FashionBertForPreTraining.from_pretrained(args.model).eval()
    processor = FashionBertProcessor.from_pretrained(args.model)
    tokenizer = processor.tokenizer
    test = make_fashion_dataset(
        num_products=args.num_products, views_per_product=3, image_size=model.config.image_size, seed=args.seed
    )["test"]
    # One row per product (its first view), as the retrieval protocol does.
    rows = test.select(representative_rows(test["product_id"])[: args.max_rows])
    colour_ids = {tokenizer.convert_tokens_to_ids(name) for name in COLOR_PALETTE if " " not in name}
    main_colour = rows["color"]

    colour_list = torch.tensor(sorted(colour_ids))
    correct = {"own_image": 0, "other_image": 0}
    # The same choice restricted to the colour words: which colour the model prefers, whatever its text prior says
    # about other words (a young MLM head mostly predicts frequent non-colour words).
    correct_among_colours = {"own_image": 0, "other_image": 0}
    predicted = alignment_prefers_true = captions_swapped = 0
    rng = np.random.default_rng(args.seed)
    for index, row in enumerate(rows):
        input_ids = torch.tensor(tokenizer(row["text"], truncation=True, max_length=model.config.max_position_embeddings)["input_ids"])
        positions = [i for i, token in enumerate(input_ids.tolist()) if token in colour_ids]
        if not positions:
            continue
        targets = input_ids[positions].clone()
        # Alignment: the true caption against the same caption with every colour word swapped for another colour.
        own_pixels = processor.image_processor(row["image"], return_tensors="pt")["pixel_values"]
        swapped = input_ids.clone()
        for position in positions:
            swapped[position] = int(rng.choice([c for c in colour_list.tolist() if c != int(input_ids[position])]))
        with torch.no_grad():
            tia = model(input_ids=torch.stack([input_ids, swapped]), pixel_values=own_pixels.expand(2, -1, -1, -1)).tia_logits
        log_odds = tia[:, 0] - tia[:, 1]
        alignment_prefers_true += int(log_odds[0] > log_odds[1])
        captions_swapped += 1
        input_ids[positions] = tokenizer.mask_token_id
        others = [j for j in range(len(rows)) if main_colour[j] != main_colour[index]] or [j for j in range(len(rows)) if j != index]
        other = int(rng.choice(others))
        for name, image_row in (("own_image", index), ("other_image", other)):
            pixel_values = processor.image_processor(rows[image_row]["image"], return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                logits = model(input_ids=input_ids[None], pixel_values=pixel_values).mlm_logits[0, positions]
            correct[name] += int((logits.argmax(-1) == targets).sum())
            correct_among_colours[name] += int((colour_list[logits[:, colour_list].argmax(-1)] == targets).sum())
        predicted += len(positions)

    result = {
        "model": args.model,
        "masked_colour_words": predicted,
        "accuracy_own_image": correct["own_image"] / max(predicted, 1),
        "accuracy_other_image": correct["other_image"] / max(predicted, 1),
        "accuracy_among_colours_own_image": correct_among_colours["own_image"] / max(predicted, 1),
        "accuracy_among_colours_other_image": correct_among_colours["other_image"] / max(predicted, 1),
        "chance_uniform_over_single_token_colours": 1 / len(colour_ids),
        "captions_with_colours_swapped": captions_swapped,
        "alignment_prefers_true_colours": alignment_prefers_true / max(captions_swapped, 1),
        "alignment_chance": 0.5,
    }
    write_json(args.output, result, sort_keys=False)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
