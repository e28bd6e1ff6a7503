"""Feedback datasets for retraining and prompt tuning outside chatplane (docs/datasets.md)."""
