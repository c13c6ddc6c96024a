"""slimkit: the product surface (CLI, pipeline, reports) over compress, export and devices."""
__version__ = "0.1.0"
