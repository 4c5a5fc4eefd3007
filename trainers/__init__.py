"""SAE architectures, the one training loop, and SAELens-format save/load."""
