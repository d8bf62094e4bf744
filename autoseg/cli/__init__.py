"""Thin command-line layer: one module per command; each parses arguments and calls one stage function."""
