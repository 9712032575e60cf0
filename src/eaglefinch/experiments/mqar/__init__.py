"""MQAR (multi-query associative recall): data, models, training, sweep and report."""
