"""tunelab: fine-tune LLMs end to end — check data, measure, train, evaluate, serve."""

__version__ = "0.1.0"
