"""Bad inputs, determinism, properties, edge cases, fuzz findings, large buffers and memory, over the whole API."""
