"""Backups to S3: storage, WAL archiving (base backups, catalog, retention and restore follow).

- layout:    where each thing lives in the bucket (pure; docs/backup-layout.md for people)
- s3:        the S3 adapter (explicit endpoint, region, credentials; path-style; bounded retries)
- wal:       wal-push / wal-fetch: zstd, sha256 in the object metadata, never overwrite
- commands:  the same as PostgreSQL runs them (archive_command / restore_command exit codes)
"""
