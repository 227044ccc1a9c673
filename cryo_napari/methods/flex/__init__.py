"""Flexible refinement (3DFlex family): mesh, model, training, generator, reconstruction."""
