"""What `make up` ends with (e2e/harness/example.py): the example PgCluster moved into its own
namespace, and the closing message that says how to connect and what to try."""
from __future__ import annotations

import json

from e2e.harness import example


def test_the_example_is_the_orders_manifest_in_its_own_namespace():
    name, body = example.example_manifest(example.MANIFEST.read_text())
    doc = json.loads(body)
    assert (name, doc["kind"], doc["metadata"]["namespace"]) == ("orders", "PgCluster", "pgop-example")
    assert doc["spec"]["instances"] == 3


def test_the_closing_message_says_how_to_connect_what_to_try_and_how_long_it_took():
    text = example.next_steps("orders", "/var/lib/pgop-env/env.sh", 981.6, 58.0)
    for expected in ("pgop psql orders -n pgop-example", "orders-rw.pgop-example.svc:5432",
                     "get secret orders-app", "pgop status orders -n pgop-example", "pgop backup orders",
                     "pgop restore orders", "pgop promote orders", ". /var/lib/pgop-env/env.sh",
                     "`make up` took 16 min 22 s", "Ready 58s after"):
        assert expected in text, expected
