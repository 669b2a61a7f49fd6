"""The network: the TRM model (`model`) and the official repository's other architectures built from `model.arch`
(`arch`: `hrm`, `trm_singlez`, `trm_hier6`, `transformer_baseline`), deep supervision with adaptive halting and
streaming inference (`act`), task-sized sequences (`crop`), and importing official checkpoints into it
(`official`). Knows nothing of runs, optimisers or checkpoint folders."""
