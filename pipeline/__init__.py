"""The library behind the stages, one subpackage per step a task takes: `data` (task files to batches), `nn` (the
model), `training` (pretraining and TTT), `prediction` (views, votes, a challenges file), `submit` (the budgeted
hidden-test run). At the top level, what all of them use: `config` (every *Config, no torch), `layout` and
`checkpoint` (a checkpoint's files; opening and loading it), `computation` (what a checkpoint computes and the
departures from it), `runtime` (devices and process groups), and `overlap` (the contamination check of a
checkpoint's training data against evaluation tasks)."""
