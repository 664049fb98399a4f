"""Bundled default models (data package)."""
