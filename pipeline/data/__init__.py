"""Data: from task files to training batches. Reading and validating tasks (ARC files, pair lists, official
builds, synthetic families; `tasks`, `sources`, `pairs`, `official_build`, `synthetic`), packing their grids into
flat arrays (`packed`), the puzzle-id schemes and the distinct versions they count (`puzzle_ids`, `versions`),
encoding augmented views (`encode`), the training set a DataConfig describes (`dataset`), the (seed, step) batch
sampler (`sampler`), and finding the hidden test file on Kaggle (`kaggle_input`). Imports no model and no
checkpoint."""
