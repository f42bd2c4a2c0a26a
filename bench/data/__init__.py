"""Data loader throughput with the course transforms (table: data; against the models in reports/speed.md)."""
