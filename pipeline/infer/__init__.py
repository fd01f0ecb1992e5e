"""Inference: the predictor, and the folder runner behind ``resseg predict``."""
