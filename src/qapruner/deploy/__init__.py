"""Deployment: pruning inside real inference (``generate``) and model export."""
