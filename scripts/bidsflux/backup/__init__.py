"""Backup and restore: GitLab's own backup, Mercure's config and database, the S3 buckets, the encrypted values file."""
