"""IMDb rating model trainer: ingest, features, training, evaluation, artifact."""
