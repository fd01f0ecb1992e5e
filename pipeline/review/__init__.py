"""When not to trust a result: the training cohort a model remembers, and scans unlike it."""
