"""The networks this pack owns (MMDiT, Video DC-AE). Plain PyTorch, no file I/O."""
