import pytest

from pgop.rds.classes import (
    INSTANCE_CLASSES,
    InvalidInstanceClass,
    UnknownInstanceSize,
    instance_class_for,
    size_of,
)


@pytest.mark.parametrize("size", ["small", "medium", "large", "huge"])
def test_every_size_maps_to_a_class(size):
    klass = instance_class_for(size)
    assert klass.startswith("db.")
    assert size_of(klass) == size


def test_default_size_is_small():
    assert instance_class_for(None) == INSTANCE_CLASSES["small"]


def test_explicit_class_overrides_size():
    assert instance_class_for("huge", "db.t3.micro") == "db.t3.micro"


def test_unknown_size_names_the_choices():
    with pytest.raises(UnknownInstanceSize, match="small, medium, large, huge"):
        instance_class_for("gigantic")


@pytest.mark.parametrize("bad", ["t3.micro", "db.t3", "DB.T3.MICRO", "db.t3.micro; rm"])
def test_malformed_class_is_refused(bad):
    with pytest.raises(InvalidInstanceClass):
        instance_class_for("small", bad)


def test_sizes_grow():
    # each size is a different class, so moving between sizes is always a modification
    assert len(set(INSTANCE_CLASSES.values())) == len(INSTANCE_CLASSES)
