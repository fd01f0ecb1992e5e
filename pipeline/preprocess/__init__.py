"""Fingerprint a cohort, plan its preprocessing, and apply the one transform chain."""
