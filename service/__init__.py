"""The BentoML layer: thin HTTP endpoints over :mod:`models`."""
