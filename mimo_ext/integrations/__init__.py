"""Helpers that make the MIMO optimizers first-class in training frameworks, one module per framework, each imported
only by its user (``from mimo_ext.integrations.lightning import MIMOCallback``), so mimo_ext never needs the
framework installed:

- :mod:`.lightning`: ``MIMOCallback`` (gradient clipping under Lightning's mixed precision).
- :mod:`.transformers`: ``MIMOTrainer`` (the per-objective path and its clipping in the Hugging Face Trainer).
- :mod:`.wrappers`: ``unwrap_optimizer``, the MIMO optimizer inside a framework's optimizer wrapper.

See docs/integrations.md.
"""
