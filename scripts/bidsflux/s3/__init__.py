"""S3 (MinIO): the indexer's own user, its bucket-limited policy and the site's buckets."""
