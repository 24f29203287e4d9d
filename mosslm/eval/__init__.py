"""Evaluation: the quick eval of the speedrun; later, the full report card."""
