"""Training: the pure train/eval steps (`trainer`), what a batch contributes to the loss
(`objectives`, `losses`, `fused_loss`), optimizers and schedules (`optim`), and peak
FLOP/s for MFU (`hardware`). The `train` command drives them."""
