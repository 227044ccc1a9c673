"""3D classification without alignment (O-EM then F-EM), poses fixed from the input."""
