"""Training: configs, data, and the one explicit loop shared by every stage."""
