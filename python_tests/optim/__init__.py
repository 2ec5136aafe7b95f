"""MIMOSGD / MIMOAdamW against torch.optim and the reference steps: parity, scenarios, conventions, distributed."""
