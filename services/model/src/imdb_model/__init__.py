"""The model contract shared by trainer and API: features, artifact checks, fast predictor."""
