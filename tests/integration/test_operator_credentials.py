"""The operator's own credentials against the real Vault dev server: what its policy
(deploy/vault/pgop-operator.hcl) lets its token do and not do, and a token given as a file that is
rotated while the client lives (the way a mounted Secret changes)."""
from __future__ import annotations

import uuid
from pathlib import Path

import hvac
import pytest

from pgop.runtime import publish as pub

REPO = Path(__file__).resolve().parents[2]
OPERATOR_POLICY = REPO / "deploy" / "vault" / "pgop-operator.hcl"


@pytest.fixture(scope="module")
def vault_root(local_env):
    client = hvac.Client(url=local_env["VAULT_ADDR"], token=local_env["VAULT_TOKEN"])
    assert client.is_authenticated(), "the root token of the local Vault does not work"
    if "secret/" not in client.sys.list_mounted_secrets_engines()["data"]:
        client.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    client.sys.create_or_update_policy("pgop-operator", OPERATOR_POLICY.read_text())
    return client


def operator_token(vault_root, ttl: str = "10m") -> str:
    return vault_root.auth.token.create(policies=["pgop-operator"], no_default_policy=True,
                                        ttl=ttl)["auth"]["client_token"]


@pytest.fixture
def ns(vault_root):
    namespace = f"cred-{uuid.uuid4().hex[:8]}"
    yield namespace
    root = pub.VaultKV(vault_root)
    for path in (f"secret/data/k8s/{namespace}/orders/db", f"secret/data/k8s/{namespace}/teams/orders",
                 f"secret/data/other/{namespace}/db", f"secret/data/k8s/{namespace}"):
        root.delete(path)


def test_the_operator_token_reaches_its_paths_and_nothing_else(local_env, vault_root, ns):
    token = operator_token(vault_root)
    vault = pub.VaultKV.connect(local_env["VAULT_ADDR"], token)
    # what it needs: the default path and an explicit one below the namespace, written, read, deleted
    for path in (f"secret/data/k8s/{ns}/orders/db", f"secret/data/k8s/{ns}/teams/orders"):
        assert vault.write(path, {"password": "p"}, cas=0) == 1
        assert vault.write(path, {"password": "q"}, cas=1) == 2
        assert vault.read(path).data == {"password": "q"}
        vault.delete(path)
        assert not vault.read(path).exists
    # outside: another mount prefix, a key directly under k8s/ (no namespace segment)
    root = pub.VaultKV(vault_root)
    root.write(f"secret/data/other/{ns}/db", {"password": "theirs"}, cas=0)
    for path in (f"secret/data/other/{ns}/db", f"secret/data/k8s/{ns}"):
        with pytest.raises(pub.VaultForbidden):
            vault.read(path)
        with pytest.raises(pub.VaultForbidden):
            vault.write(path, {"password": "mine"}, cas=0)
        with pytest.raises(pub.VaultForbidden):
            vault.delete(path)
    assert root.read(f"secret/data/other/{ns}/db").data == {"password": "theirs"}
    client = hvac.Client(url=local_env["VAULT_ADDR"], token=token)
    forbidden = [
        lambda: client.secrets.kv.v2.list_secrets(path="k8s", mount_point="secret"),  # no enumerating
        lambda: client.secrets.kv.v2.list_secrets(path=f"k8s/{ns}", mount_point="secret"),
        lambda: client.secrets.kv.v2.read_secret_metadata(path=f"k8s/{ns}/orders/db", mount_point="secret"),
        lambda: client.secrets.kv.v2.destroy_secret_versions(path=f"k8s/{ns}/orders/db", versions=[1],
                                                             mount_point="secret"),
        lambda: client.sys.list_policies(),
        lambda: client.sys.read_policy("pgop-operator"),
        lambda: client.auth.token.create(policies=["pgop-operator"]),  # no child tokens
    ]
    for call in forbidden:
        with pytest.raises(hvac.exceptions.Forbidden):
            call()


def test_a_token_file_rotated_in_place_is_used_from_the_next_call(local_env, vault_root, ns, tmp_path):
    path = f"secret/data/k8s/{ns}/orders/db"
    token_file = tmp_path / "vault-token"
    first = operator_token(vault_root)
    token_file.write_text(first + "\n")
    vault = pub.VaultKV.connect(local_env["VAULT_ADDR"], None, token_file=str(token_file))
    assert vault.write(path, {"password": "p"}, cas=0) == 1
    vault_root.auth.token.revoke(first)  # the old token is gone ...
    with pytest.raises(pub.VaultForbidden):
        vault.read(path)
    token_file.write_text(operator_token(vault_root))  # ... and the Secret holds a new one
    assert vault.read(path).data == {"password": "p"}  # same client, no restart
    token_file.unlink()
    with pytest.raises(pub.VaultForbidden, match="no Vault token configured"):
        vault.read(path)
