"""Cohorts in the Medical Segmentation Decathlon layout: the synthetic one, and splits."""
