"""Audit a chest X-ray classifier from the MLflow Model Registry with Grad-CAM heatmaps."""
