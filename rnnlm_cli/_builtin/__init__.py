"""Locates the built-in default config and corpus (installed from the repo's configs/ and data/)."""
