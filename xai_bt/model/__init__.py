"""The model bundle: preprocessing, architectures, training, calibrating a bundle, its model card."""
