"""The world card: what the built-in synthetic world holds and how well the bundled CLIP names it.

For each attribute: its values, how often pretraining captions name it (measured on the
captions), the bundled tiny CLIP's zero-shot accuracy on held-out renders (the attribute's
value prompts, template-ensembled over shape nouns, through the model's own preprocessing), and
how well its image features encode the attribute (a linear probe on held-out renders).
The card is what makes the world a fair stand-in for real CLIP data: some bias attributes named
well, one partly, one not at all (docs/world.md).
"""

from __future__ import annotations

from .attributes import ATTRIBUTES, attribute_prompts
from .pretraining import caption_rates
from .render import heldout_renders

HELDOUT_IMAGES = 2000  # held-out renders the accuracies are measured on (seeded: the card is deterministic)
# An attribute's kind by the bundled model's held-out zero-shot accuracy (issue 15's bands):
# named well at or above WELL_NAMED, not named (near chance) at or below UNNAMED, rarely named between.
WELL_NAMED, UNNAMED = 0.90, 0.65
KINDS = ("well named", "rarely named", "unnamed")


def attribute_kind(zeroshot_accuracy: float) -> str:
    """'well named', 'rarely named' or 'unnamed', by the bands above."""
    if zeroshot_accuracy >= WELL_NAMED:
        return KINDS[0]
    return KINDS[2] if zeroshot_accuracy <= UNNAMED else KINDS[1]


def _heldout_features(backbone, n: int):
    import torch
    from PIL import Image

    images, labels = heldout_renders(n)
    feats = torch.cat([
        backbone.encode_images(torch.stack([backbone.preprocess(Image.fromarray(im)) for im in images[i:i + 500]]),
                               normalize=True)
        for i in range(0, n, 500)])
    return feats, labels


def zero_shot_accuracy(backbone, n: int = HELDOUT_IMAGES, heldout=None) -> dict[str, float]:
    """Held-out zero-shot accuracy per world attribute (argmax over the attribute's value prompts)."""
    import torch
    import torch.nn.functional as F

    feats, labels = heldout or _heldout_features(backbone, n)
    accuracy = {}
    for attribute in ATTRIBUTES:
        prompts = attribute_prompts(attribute)
        text = torch.stack([F.normalize(backbone.encode_text(p, normalize=True).mean(0), dim=-1) for p in prompts.values()])
        pred = (feats @ text.T).argmax(1).cpu().numpy()
        accuracy[attribute] = float((pred == labels[attribute]).mean())
    return accuracy


def probe_accuracy(backbone, n: int = HELDOUT_IMAGES, heldout=None) -> dict[str, float]:
    """How well the image features encode each attribute: a logistic regression trained on the
    first three quarters of the held-out renders, accuracy on the last quarter."""
    from sklearn.linear_model import LogisticRegression

    feats, labels = heldout or _heldout_features(backbone, n)
    x, cut = feats.cpu().double().numpy(), 3 * len(feats) // 4
    return {a: float(LogisticRegression(max_iter=3000).fit(x[:cut], y[:cut]).score(x[cut:], y[cut:]))
            for a, y in labels.items()}


def world_card(backbone) -> dict:
    """{"attributes": {name: {"values": [...], "caption_rate": r, "zeroshot_accuracy": a,
    "probe_accuracy": p, "chance": c, "kind": k}}, ...} for the given backbone (the CLI's: the
    bundled groupcoop-tiny)."""
    rates = caption_rates()
    heldout = _heldout_features(backbone, HELDOUT_IMAGES)
    accuracy, probe = zero_shot_accuracy(backbone, heldout=heldout), probe_accuracy(backbone, heldout=heldout)
    return {
        "backbone": backbone.identity,
        "heldout_images": HELDOUT_IMAGES,
        "attributes": {a: {"values": list(values), "caption_rate": round(rates[a], 4),
                           "zeroshot_accuracy": round(accuracy[a], 4), "probe_accuracy": round(probe[a], 4),
                           "chance": round(1 / len(values), 4), "kind": attribute_kind(accuracy[a])}
                       for a, values in ATTRIBUTES.items()},
    }


def format_card(card: dict) -> str:
    """The card as a Markdown table (the README's world table is this output)."""
    lines = ["| attribute | values | captions naming it | zero-shot accuracy | linear probe | chance | kind |",
             "|---|---|---|---|---|---|---|"]
    for name, a in card["attributes"].items():
        lines.append(f"| {name} | {', '.join(a['values'])} | {100 * a['caption_rate']:.1f}% | "
                     f"{100 * a['zeroshot_accuracy']:.1f}% | {100 * a['probe_accuracy']:.1f}% | "
                     f"{100 * a['chance']:.1f}% | {a['kind']} |")
    return "\n".join(lines)
