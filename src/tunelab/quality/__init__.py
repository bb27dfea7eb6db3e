"""Data quality: inspect, check, clean, split, augment, data cards, pre-flight checks before training."""
