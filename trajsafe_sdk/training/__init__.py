"""Data pipeline, hindsight teacher, training and export of the monitor (needs the `train` extra)."""
