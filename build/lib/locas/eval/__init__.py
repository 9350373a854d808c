"""Evaluation harnesses (PG-19 streaming perplexity, ...) and reporting helpers."""
