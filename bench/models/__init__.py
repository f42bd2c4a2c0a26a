"""Per-model training-step throughput and peak memory (table: models; summaries in reports/speed.md, memory.md)."""
