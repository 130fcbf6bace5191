"""Feature hashing and batching of example Parquet into TorchRec inputs."""
