"""cryo_napari: heterogeneity analysis for single-particle cryo-EM (CLI + napari plugin).

The core (``io``, ``geometry``, ``simulate``, ``methods``, ``analysis``, ``jobs``, ``cli``) never
imports Qt or napari; ``cryo_napari.napari`` is the thin GUI layer.
"""

__version__ = "0.1.0"
