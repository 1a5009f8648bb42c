"""IMDb rating model HTTP service."""
