"""Evaluation of predicted masks against reference labels; reads files only, never networks."""
