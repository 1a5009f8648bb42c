"""The model contract shared by trainer and API: features, artifact manifest and verification, fast predictor."""
