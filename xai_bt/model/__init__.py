"""The model bundle: preprocessing, architectures, training, provenance, its model card."""
