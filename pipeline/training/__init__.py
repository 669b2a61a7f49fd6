"""Training, for pretraining and test-time training alike: the one builder of a run (`build`), the Trainer and its
step (`train`), what trains with which optimiser and EMA (`trainable`, `optim`, `lora`), DDP / DeepSpeed /
compile wrapping (`parallel`), saving and resuming the whole training state (`train_state`), logging and metric
sinks (`metrics`), and test-time training on new tasks from a checkpoint (`ttt`)."""
