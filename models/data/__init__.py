"""Data: dataset readers yielding events and items, sequences derived from them, the synthetic shop."""
