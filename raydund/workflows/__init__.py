"""Workflows that chain the stages: the README demo, job submission to a Ray cluster."""
