"""Explanation methods: the registry, the shared CAM pass, gradient, perturbation and SHAP methods, results."""
