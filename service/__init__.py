"""DIHS Serve: the Ray Serve application around a dihs_model bundle."""
