"""Helpers for tests and benchmarks: tiny random-weight pipelines built from configs, saved locally."""
