"""A VAE with a per-pixel 256-way categorical decoder, served by elbo-serve as a plug-in kind."""
