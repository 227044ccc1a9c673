"""Thin napari/Qt layer; the only package that may import Qt or napari."""
