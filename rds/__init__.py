"""pgop: rds."""
