"""Training: runtime (devices, DDP, AMP), optimisers, LR schedules, checkpoints and the loop."""
