"""Scoring shared by training and evaluation: metrics over outputs, answer extraction, the LLM judge, and the
reward sources (functions, reward models, judges) that GRPO trains on and the `reward` metric reports."""
