"""The canary: a synthetic study through the whole data path (endpoint, indexer, GitLab, S3)."""
