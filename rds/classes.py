"""instanceSize -> RDS DB instance class.

Sizes are what application teams ask for; classes are what AWS sells. Graviton classes are the
cheapest per vCPU for MySQL 8.0; `spec.instanceClass` overrides the mapping when a team needs a
specific class.
"""

from __future__ import annotations

import re

INSTANCE_CLASSES: dict[str, str] = {
    "small": "db.t4g.small",  # 2 vCPU (burstable), 2 GiB
    "medium": "db.m6g.large",  # 2 vCPU, 8 GiB
    "large": "db.m6g.2xlarge",  # 8 vCPU, 32 GiB
    "huge": "db.r6g.8xlarge",  # 32 vCPU, 256 GiB
}

DEFAULT_SIZE = "small"

_CLASS = re.compile(r"^db\.[a-z0-9-]+\.[a-z0-9]+$")


class UnknownInstanceSize(ValueError):
    pass


class InvalidInstanceClass(ValueError):
    pass


def is_valid_instance_class(instance_class: str) -> bool:
    return bool(_CLASS.match(instance_class))


def instance_class_for(instance_size: str | None, instance_class: str | None = None) -> str:
    """The DB instance class to run: the explicit override, else the class of the size."""
    if instance_class:
        if not is_valid_instance_class(instance_class):
            raise InvalidInstanceClass(
                f"instanceClass {instance_class!r} is not an RDS class name like 'db.m6g.large'"
            )
        return instance_class
    size = instance_size or DEFAULT_SIZE
    try:
        return INSTANCE_CLASSES[size]
    except KeyError:
        raise UnknownInstanceSize(
            f"instanceSize {size!r} is not one of {', '.join(INSTANCE_CLASSES)}"
        ) from None


def size_of(instance_class: str) -> str | None:
    """The size name of a class, if it is one of the mapped ones (for display)."""
    for size, klass in INSTANCE_CLASSES.items():
        if klass == instance_class:
            return size
    return None
