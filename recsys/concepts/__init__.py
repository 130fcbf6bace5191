"""Explicit concept spaces: the concept vocabulary, SESA / ESA / latent scorers, explanations."""
