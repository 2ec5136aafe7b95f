"""The test suite, by layer: ops/, optim/, balance/, reliability/; shared references, tables and fixtures here."""
