"""pgop: pgop."""
