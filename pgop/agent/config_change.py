"""What the configuration files on disk say, and what it costs to apply a new version of them.

Pure: `config` reads and writes the files; `ha` decides with the cost (reload or restart).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from pgop.kernel import pgconfig

_SETTING_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*) = '((?:[^'\\]|''|\\.)*)'$")


def parse_postgresql_conf(text: str) -> dict[str, str] | None:
    """The settings of a file the agent rendered, or None for a file it did not write."""
    if not text.startswith("# Written by the pgop agent"):
        return None
    found: dict[str, str] = {}
    for line in text.splitlines()[1:]:
        match = _SETTING_LINE.match(line)
        if match:
            key, value = match.groups()
            found[key] = re.sub(r"''|\\(.)", lambda m: m.group(1) if m.group(1) is not None else "'", value)
    return found


@dataclass(frozen=True)
class WrittenConfig:
    settings: dict[str, str] | None  # None: no file the agent wrote (a fresh initdb or clone)
    hba: str | None


def change_cost(written: WrittenConfig, settings: dict[str, str], hba: str,
                postgres_version: int) -> pgconfig.SettingsChange | None:
    """None when the files on disk already say this; otherwise which settings changed and which
    of those only a restart applies (an unknown previous file counts as needing a restart)."""
    if written.settings == settings and written.hba == hba:
        return None
    if written.settings is None:
        every = frozenset(settings)
        return pgconfig.SettingsChange(changed=every, needs_restart_for=every)
    change = pgconfig.classify_change(written.settings, settings, postgres_version)
    if not change.changed:
        # Only pg_hba.conf differs: a reload applies it.
        return pgconfig.SettingsChange(changed=frozenset({"pg_hba.conf"}), needs_restart_for=frozenset())
    return change
