"""The feature index: per-latent statistics, contexts, logit lens and neighbours (issue #4)."""
