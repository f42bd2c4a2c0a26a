"""Spec of impl/attention.py (seed §3.2.1): attention, windows, DropPath/MLP/PatchEmbed, the transformer block."""
