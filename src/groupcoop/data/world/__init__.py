"""The built-in synthetic world: small rendered scenes of one object (shape, colour, size, surface
pattern, corner mark) on a textured background, with captions to pretrain the bundled tiny CLIP on
and group-robustness tasks whose class is the shape family and whose biases are the other attributes.

Modules (each imports only those above it):
- attributes: the attributes and their values, the seeded random streams, prompt phrases.
- render: the image renderer, `SyntheticImages` (a dataset's images), held-out renders.
- pretraining: captioned pretraining batches and how often captions name each attribute.
- tasks: `SyntheticTask` and the built-in tasks `TASKS`.
- random_tasks: `synth-random:<seed>` tasks drawn from a seed.
- datasets: `make_task_dataset`, a task's GroupDataset.
- card: the world card, how well a given backbone names each attribute.
"""
