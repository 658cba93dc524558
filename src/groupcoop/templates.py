"""The zero-shot templates: hand-written prompts averaged over these (the usual CLIP ensemble),
for the zero-shot methods and for the labelers' zero-shot scores of bias values."""

TEMPLATES = ("a photo of a {}.", "a {}.")
