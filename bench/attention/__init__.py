"""Benchmarks of impl/attention.py and the SimpleViT training step (table: attention)."""
