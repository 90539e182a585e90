"""Prompt pipelines: parse, retrieve, render, generate, vote (see runner.py)."""
