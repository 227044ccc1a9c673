"""Geometry: rotation and Fourier conventions, projection, CTF, FSC, masks (torch, batched)."""
