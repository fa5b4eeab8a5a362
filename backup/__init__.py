"""pgop: backup."""
