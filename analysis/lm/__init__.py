"""The language-model training library of the training experiments: byte-level text (data), the quantized loss,
optimizer and vmapped steps (train), the run loop over seeds and devices with checkpoints (run)."""
