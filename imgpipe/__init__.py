"""imgpipe: a CSV of product image URLs in; compressed, served images, live status and a signed webhook out."""

__version__ = "0.1.0"
