"""Pure-PyTorch VAE and DDPM: networks, diffusion maths, samplers and likelihood bounds.

Nothing in this package imports bentoml, pydantic or prometheus_client.
"""
