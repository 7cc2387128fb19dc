"""Fetching datasets: verified resumable downloads, COCO and Kaggle archives, safe extraction."""
