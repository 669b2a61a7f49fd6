"""The network: the TRM model (`model`), deep supervision with adaptive halting and streaming inference
(`act`), task-sized sequences (`crop`), and importing official TRM checkpoints into it (`official`). Knows
nothing of runs, optimisers or checkpoint folders."""
