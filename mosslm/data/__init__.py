"""Data stage: conversation files (check, convert) and, later, cleaning and synthesis."""
