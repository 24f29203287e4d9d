"""mosslm: build, tune and serve your own MOSS-style bilingual assistant with plugins."""

__version__ = "0.1.0"
