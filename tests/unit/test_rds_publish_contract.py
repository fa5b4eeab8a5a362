import pytest

from pgop.runtime import publish as pub
from pgop.runtime.config import ConsulAddress, OperatorConfig


@pytest.mark.parametrize("path,expected", [
    ("secret/data/k8s/shop/orders/db", ("secret", "k8s/shop/orders/db")),
    ("secret/k8s/shop/orders/db", ("secret", "k8s/shop/orders/db")),
    ("/kv/data/app/", ("kv", "app")),
])
def test_kv2_paths(path, expected):
    assert pub.split_kv2_path(path) == expected


def test_kv2_path_needs_mount_and_key():
    with pytest.raises(ValueError):
        pub.split_kv2_path("secret")


def test_contract_keys():
    c = pub.Connection(engine="mysql", host="h", port=3306, dbname="orders", username="dbadmin")
    assert tuple(pub.vault_document(c, "pw")) == pub.VAULT_KEYS
    entries = pub.consul_entries(c)
    assert tuple(entries) == pub.CONSUL_KEYS and "password" not in entries
    assert entries["port"] == "3306"


def test_generated_passwords_are_rds_safe():
    passwords = {pub.generate_password() for _ in range(50)}
    assert len(passwords) == 50
    for p in passwords:
        assert len(p) == 32 and p.isalnum()


def test_stored_password_repr_hides_it():
    assert "hunter2" not in repr(pub.StoredPassword("hunter2", 1, True))
    assert "hunter2" not in repr(pub.SecretVersion(1, {"password": "hunter2"}))


def test_config_from_env_hides_tokens():
    config = OperatorConfig.from_env({
        "PGOP_RDS_ENDPOINT": "http://127.0.0.1:5000", "AWS_DEFAULT_REGION": "eu-west-1",
        "VAULT_ADDR": "http://127.0.0.1:8200", "VAULT_TOKEN": "s.secret-token",
        "CONSUL_HTTP_ADDR": "127.0.0.1:8501", "CONSUL_HTTP_TOKEN": "consul-secret",
    })
    assert config.rds_endpoint == "http://127.0.0.1:5000" and config.aws_region == "eu-west-1"
    assert config.consul_address == ConsulAddress("127.0.0.1", 8501, "http")
    assert "s.secret-token" not in repr(config) and "consul-secret" not in repr(config)


def test_unset_endpoint_means_real_aws():
    assert OperatorConfig.from_env({}).rds_endpoint is None


def test_consul_address_forms():
    assert ConsulAddress.parse("https://consul.example:8501") == ConsulAddress("consul.example", 8501, "https")
    assert ConsulAddress.parse("localhost") == ConsulAddress("localhost", 8500, "http")
