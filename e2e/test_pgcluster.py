"""PgCluster end to end on the local cluster, checked as a user would: kubectl and psql."""
from __future__ import annotations

import base64
import json
import time
import urllib.request

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e.chaos import stop_process

TIMEOUT = 240


def manifest(name, ns, instances=3, sync=1, extra=""):
    return f"""
apiVersion: pgop.io/v1
kind: PgCluster
metadata: {{name: {name}, namespace: {ns}}}
spec:
  instances: {instances}
  postgresVersion: 15
  synchronousReplicas: {sync}
  storage: {{size: 1Gi}}
  bootstrap: {{initdb: {{database: app, owner: app}}}}
{extra}"""


def cluster(kubectl, ns, name):
    return kubectl.json("-n", ns, "get", "pgcluster", name)


def wait_ready(kubectl, ns, name, instances, timeout=TIMEOUT):
    def ready():
        st = cluster(kubectl, ns, name).get("status") or {}
        return (st.get("phase") == "Ready" and st.get("readyInstances") == instances
                and len(st.get("instances") or []) == instances) and st
    try:
        return kubectl.wait_for(ready, f"PgCluster {name} Ready with {instances} instances", timeout)
    except AssertionError as e:
        detail = kubectl("-n", ns, "get", "pgc,pgi,pods,pvc", "-o", "wide", check=False).stdout
        events = kubectl("-n", ns, "get", "events", "--sort-by=.lastTimestamp", check=False).stdout
        raise AssertionError(f"{e}\n{cluster(kubectl, ns, name).get('status')}\n{detail}\n{events[-4000:]}") from None


def secret(kubectl, ns, name, key):
    data = kubectl.json("-n", ns, "get", "secret", name)["data"]
    return base64.b64decode(data[key]).decode()


def service_ip(kubectl, ns, name):
    return kubectl.json("-n", ns, "get", "svc", name)["spec"]["clusterIP"]


def connect(kubectl, ns, service, cluster_name, user="app", dbname="app"):
    password = secret(kubectl, ns, f"{cluster_name}-app", "password")
    return pg_connect(host=service_ip(kubectl, ns, service), port=5432, dbname=dbname,
                      user=user, password=password)


def pg_connect(**kw):
    """Connects like an application: a Service's new endpoint takes kube-proxy a moment, so a
    refused connection is retried for a bounded time."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return psycopg.connect(connect_timeout=5, autocommit=True, **kw)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def exec_psql(kubectl, ns, pod, sql, db="app"):
    """An administrator's session: kubectl exec + psql over the local socket, no password."""
    return kubectl("-n", ns, "exec", pod, "-c", "postgres", "--", "psql", "-XAtq", "-d", db,
                   "-c", sql).stdout.strip()


def eventually(fn, what, timeout=60, interval=1.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # not there yet: connection refused, object missing, ...
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


def test_three_instances_stream_with_quorum_sync(kubectl, namespace, operator):
    ns, name = namespace, "orders"
    t0 = time.monotonic()
    kubectl("apply", "-f", "-", input=manifest(name, ns))
    # A new cluster's replicas come with its first primary: their pods start while it runs initdb
    # and their agents wait for it, instead of being made once it is ready.
    early = eventually(lambda: (items := kubectl.json("-n", ns, "get", "pginstances")["items"])
                       and len(items) == 3 and items, "three PgInstances", interval=0.2)
    first = next(i for i in early if i["metadata"]["name"] == f"{name}-0")
    assert not (first.get("status") or {}).get("ready"), "the replicas were made only once the primary was ready"
    status = wait_ready(kubectl, ns, name, 3)
    print(f"3-instance cluster Ready in {time.monotonic() - t0:.1f}s")
    assert status["currentPrimary"] == f"{name}-0"

    # what the cluster controller made, owned by the PgCluster
    uid = cluster(kubectl, ns, name)["metadata"]["uid"]
    instances = kubectl.json("-n", ns, "get", "pginstances")["items"]
    assert sorted(i["metadata"]["name"] for i in instances) == [f"{name}-0", f"{name}-1", f"{name}-2"]
    assert all(i["metadata"]["ownerReferences"][0]["uid"] == uid for i in instances)
    # One pod and one container start per instance: its agent filled the volume, then started
    # Postgres; once the volume is marked the pod may no longer bootstrap (its annotation is gone).
    pods = eventually(lambda: (items := kubectl.json("-n", ns, "get", "pods", "-l", f"pgop.io/cluster={name}")["items"])
                      and not any("pgop.io/bootstrap-mode" in (p["metadata"].get("annotations") or {})
                                  for p in items) and items, "the pods' permission to bootstrap withdrawn", 30, 0.5)
    assert sorted(p["metadata"]["name"] for p in pods) == [f"{name}-0", f"{name}-1", f"{name}-2"]
    for pod in pods:
        pod_name = pod["metadata"]["name"]
        assert not pod["spec"].get("initContainers"), pod_name
        [postgres] = pod["status"]["containerStatuses"]
        assert postgres["restartCount"] == 0, pod_name
        mode = "initdb" if pod_name == f"{name}-0" else "basebackup"
        assert f"bootstrap {mode} into" in kubectl("-n", ns, "logs", pod_name, "-c", "postgres").stdout, pod_name
    # The first primary's volume was filled by initdb, the replicas' by pg_basebackup, each marked
    # once its container was ready (before the pod's permission went); once the cluster has data
    # every instance says basebackup, so a lost volume is never re-initialised.
    filled = {p["metadata"]["name"]: p["metadata"]["annotations"].get("pgop.io/initialized")
              for p in kubectl.json("-n", ns, "get", "pvc")["items"]}
    assert filled == {f"{name}-0": "initdb", f"{name}-1": "basebackup", f"{name}-2": "basebackup"}
    assert {i["spec"]["bootstrap"] for i in kubectl.json("-n", ns, "get", "pginstances")["items"]} == {"basebackup"}
    for svc in ("rw", "ro", "r"):
        kubectl("-n", ns, "get", "svc", f"{name}-{svc}")
    for s in ("superuser", "app", "replication"):
        assert len(secret(kubectl, ns, f"{name}-{s}", "password")) >= 20
    kubectl("-n", ns, "get", "pdb", name)
    # kubectl get shows instances, ready, primary, phase
    row = kubectl("-n", ns, "get", "pgcluster", name, "--no-headers").stdout.split()
    assert row[:5] == [name, "3", "3", f"{name}-0", "Ready"]

    # the app writes through -rw ...
    with connect(kubectl, ns, f"{name}-rw", name) as conn:
        conn.execute("create table orders (id int primary key, item text)")
        conn.execute("insert into orders select g, 'item-' || g from generate_series(1, 100) g")
    # ... reads through -ro, which refuses writes
    with connect(kubectl, ns, f"{name}-ro", name) as conn:
        assert eventually(lambda: conn.execute("select count(*) from orders").fetchone()[0] == 100,
                          "rows on a replica")
        assert conn.execute("select pg_is_in_recovery()").fetchone()[0] is True
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("insert into orders values (1000, 'nope')")

    # the administrator's view: peer authentication over the local socket, as postgres
    primary = f"{name}-0"
    assert exec_psql(kubectl, ns, primary, "select current_user") == "postgres"
    # The primary's agent names the replicas in synchronous_standby_names once they stream
    # (preferred mode), within one turn of its loop after they connect.
    def replication_rows():
        rows = exec_psql(kubectl, ns, primary,
                         "select application_name, state, sync_state from pg_stat_replication order by 1")
        got = [r.split("|") for r in rows.splitlines()]
        return len(got) == 2 and all(r[2] == "quorum" for r in got) and got
    replication = eventually(replication_rows, "both replicas streaming as quorum candidates", 30)
    assert [r[0] for r in replication] == [f"{name}-1", f"{name}-2"]
    assert all(r[1] == "streaming" for r in replication)
    # ANY 1 (both replicas): each is a quorum candidate; a commit waits for one of them
    assert [r[2] for r in replication] == ["quorum", "quorum"]
    names = exec_psql(kubectl, ns, primary, "show synchronous_standby_names")
    assert names == f'ANY 1 ("{name}-1", "{name}-2")'
    slots = exec_psql(kubectl, ns, primary, "select slot_name from pg_replication_slots where active order by 1")
    assert len(slots.splitlines()) == 2
    for replica in (f"{name}-1", f"{name}-2"):
        assert eventually(lambda replica=replica: exec_psql(kubectl, ns, replica, "select count(*) from orders") == "100",
                          f"rows on {replica}")

    # a replica's pod dies: it comes back on the same volume, with its data
    old_uid = kubectl.json("-n", ns, "get", "pod", f"{name}-2")["metadata"]["uid"]
    kubectl("-n", ns, "delete", "pod", f"{name}-2", "--wait=false")
    eventually(lambda: kubectl.json("-n", ns, "get", "pod", f"{name}-2")["metadata"]["uid"] != old_uid,
               "a new pod for orders-2")
    wait_ready(kubectl, ns, name, 3)
    assert exec_psql(kubectl, ns, f"{name}-2", "select count(*) from orders") == "100"
    assert kubectl.json("-n", ns, "get", "pginstance", f"{name}-2")["spec"]["bootstrap"] == "basebackup"

    # a part of the cluster deleted by hand is made again at once: the deletion is a watch event
    # that starts the cluster's pass (a Ready cluster's next full timed pass may be a minute away,
    # pgop.cluster.pace.RESYNC)
    parts = (("svc", f"{name}-ro"), ("pdb", name))
    uids = {part: kubectl.json("-n", ns, "get", *part)["metadata"]["uid"] for part in parts}
    deleted = time.monotonic()
    for part in parts:
        kubectl("-n", ns, "delete", *part, "--wait=true")
    for part in parts:
        eventually(lambda part=part: kubectl.json("-n", ns, "get", *part)["metadata"]["uid"] != uids[part],
                   f"{part} made again", timeout=20, interval=0.2)
    print(f"deleted Service and PDB made again within {time.monotonic() - deleted:.1f}s")
    with connect(kubectl, ns, f"{name}-ro", name) as conn:
        assert eventually(lambda: conn.execute("select count(*) from orders").fetchone()[0] == 100, "reads via -ro")

    # synchronousReplicas changes without a restart
    started = exec_psql(kubectl, ns, primary, "select pg_postmaster_start_time()")
    kubectl("-n", ns, "patch", "pgcluster", name, "--type=merge", "-p", '{"spec":{"synchronousReplicas":2}}')
    eventually(lambda: exec_psql(kubectl, ns, primary, "show synchronous_standby_names")
               == f'ANY 2 ("{name}-1", "{name}-2")', "synchronous_standby_names with ANY 2")
    assert exec_psql(kubectl, ns, primary, "select pg_postmaster_start_time()") == started

    # scale up to 5, then down to 2: only replicas go, and their slots with them
    kubectl("-n", ns, "patch", "pgcluster", name, "--type=merge", "-p", '{"spec":{"instances":5,"synchronousReplicas":1}}')
    wait_ready(kubectl, ns, name, 5)
    assert eventually(lambda: exec_psql(kubectl, ns, f"{name}-4", "select count(*) from orders") == "100",
                      "rows on the new replica")
    kubectl("-n", ns, "patch", "pgcluster", name, "--type=merge", "-p", '{"spec":{"instances":2}}')
    wait_ready(kubectl, ns, name, 2)
    left = sorted(i["metadata"]["name"] for i in kubectl.json("-n", ns, "get", "pginstances")["items"])
    assert left == [f"{name}-0", f"{name}-1"]
    assert eventually(lambda: exec_psql(kubectl, ns, primary, "select slot_name from pg_replication_slots")
                      .splitlines() == [exec_psql(kubectl, ns, primary,
                                                  f"select slot_name from pg_replication_slots where slot_name like '%{name}_1'")],
                      "only the slot of orders-1 left")

    # no password in the operator's log, the agents' logs, Events or the status
    passwords = [secret(kubectl, ns, f"{name}-{s}", "password") for s in ("superuser", "app", "replication")]
    texts = {
        "operator log": operator.log_text(),
        "events": kubectl("-n", ns, "get", "events", "-o", "json").stdout,
        "status": kubectl("-n", ns, "get", "pgclusters,pginstances", "-o", "json").stdout,
        **{f"log of {p}": kubectl("-n", ns, "logs", p, "--all-containers", check=False).stdout
           for p in (f"{name}-0", f"{name}-1")},
    }
    leaks = [where for where, text in texts.items() for pw in passwords if pw in text]
    assert not leaks, f"a password appeared in: {leaks}"

    # the operator's /metrics, as a scraper reads it (e2e/test_metrics.py runs a real Prometheus
    # when it is built): this cluster Ready with every instance it wants ready, and the agents'
    # heartbeats timed from their write to the watch's delivery
    scraped = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(urllib.request.urlopen(
                   f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=10).read().decode())
               for s in family.samples}
    assert scraped[("pgop_objects", (("kind", "PgCluster"), ("namespace", ns), ("phase", "Ready")))] == 1
    wanted = cluster(kubectl, ns, name)["spec"]["instances"]
    assert scraped[("pgop_cluster_instances", (("cluster", name), ("namespace", ns)))] == wanted
    assert scraped[("pgop_cluster_ready_instances", (("cluster", name), ("namespace", ns)))] == wanted
    beats = scraped[("pgop_heartbeat_delivery_delay_seconds_count", ())]
    assert beats > 0
    print(f"heartbeats delivered: {beats:.0f}, mean delay from write to delivery "
          f"{scraped[('pgop_heartbeat_delivery_delay_seconds_sum', ())] / beats:.3f}s")

    # deletion: pods, services and secrets go; volumes stay (reclaimPolicy Retain by default)
    kubectl("-n", ns, "delete", "pgcluster", name, "--wait=true", "--timeout=120s")
    eventually(lambda: not kubectl("-n", ns, "get", "pods,svc,pginstances", "-l", f"pgop.io/cluster={name}",
                                   "-o", "name").stdout.strip(), "pods, services and instances gone", 120)
    assert not kubectl("-n", ns, "get", "secrets", "-l", f"pgop.io/cluster={name}", "-o", "name").stdout.strip()
    pvcs = kubectl("-n", ns, "get", "pvc", "-o", "name").stdout.split()
    assert f"persistentvolumeclaim/{name}-0" in pvcs


def bootstrapping(kubectl, ns, pod_name):
    """The pod exists, made to bootstrap its volume, and its Postgres container was not ready yet."""
    got = kubectl("-n", ns, "get", "pod", pod_name, "-o", "json", check=False)
    if got.returncode != 0:
        return False
    pod = json.loads(got.stdout)
    ready = [s.get("ready") for s in (pod.get("status") or {}).get("containerStatuses") or ()
             if s["name"] == "postgres"]
    return "pgop.io/bootstrap-mode" in (pod["metadata"].get("annotations") or {}) and not any(ready)


def test_operator_restart_resumes_a_half_done_bootstrap(kubectl, namespace, operator):
    ns, name = namespace, "restart"
    kubectl("apply", "-f", "-", input=manifest(name, ns, instances=2, sync=0))
    eventually(lambda: bootstrapping(kubectl, ns, f"{name}-0"), "the first pod bootstrapping",
               60, 0.2)
    operator.kill()
    time.sleep(3)
    operator.start()
    wait_ready(kubectl, ns, name, 2)
    # the running primary kept its pod across the operator's restart
    pod = kubectl.json("-n", ns, "get", "pod", f"{name}-0")
    operator.kill()
    operator.start()
    wait_ready(kubectl, ns, name, 2)
    time.sleep(5)
    assert kubectl.json("-n", ns, "get", "pod", f"{name}-0")["metadata"]["uid"] == pod["metadata"]["uid"]
    restarts = pod["status"]["containerStatuses"][0]["restartCount"]
    assert kubectl.json("-n", ns, "get", "pod", f"{name}-0")["status"]["containerStatuses"][0]["restartCount"] == restarts


def test_replicas_waiting_for_a_first_primary_deleted_during_initdb_clone_the_new_one(kubectl, namespace, operator):
    """A new cluster's replicas' agents wait for the first primary before they clone. Deleted by hand while
    its initdb runs, the first primary (its PgInstance, volume and pod) is made again,
    since no instance ever ran; the waiting replicas clone the new one, not anything else."""
    ns, name = namespace, "lost"
    kubectl("apply", "-f", "-", input=manifest(name, ns, instances=3, sync=1))

    # Its initdb held where it is (SIGSTOP from the host), so the deletion comes while it runs, not
    # after Postgres started: initdb takes about a second here.
    pod = eventually(lambda: (got := kubectl("-n", ns, "get", "pod", f"{name}-0", "-o", "json", check=False))
                     .returncode == 0 and json.loads(got.stdout), "the first primary's pod", 60, 0.1)
    stop_process(pod["metadata"]["uid"], "initdb")
    first = kubectl.json("-n", ns, "get", "pginstance", f"{name}-0")
    assert not (first.get("status") or {}).get("lastHeartbeat"), "the first primary never ran"
    kubectl("-n", ns, "delete", "pginstance", f"{name}-0", "--wait=false")
    waiting = [kubectl.json("-n", ns, "get", "pginstance", f"{name}-{i}") for i in (1, 2)]
    assert all(not (i.get("status") or {}).get("ready") for i in waiting)
    old_uid = first["metadata"]["uid"]

    status = wait_ready(kubectl, ns, name, 3)
    assert status["currentPrimary"] == f"{name}-0"
    again = kubectl.json("-n", ns, "get", "pginstance", f"{name}-0")
    assert again["metadata"]["uid"] != old_uid
    reasons = kubectl("-n", ns, "get", "events", "--field-selector", f"involvedObject.name={name}",
                      "-o", "jsonpath={.items[*].message}").stdout
    assert "it went before it ever ran" in reasons
    # One database: the replicas are clones of the new primary and stream from it.
    ids = {i: exec_psql(kubectl, ns, f"{name}-{i}", "select system_identifier from pg_control_system()",
                        db="postgres") for i in range(3)}
    assert len(set(ids.values())) == 1, ids
    assert eventually(lambda: exec_psql(kubectl, ns, f"{name}-0", "select count(*) from pg_stat_replication "
                                        "where state = 'streaming'", db="postgres") == "2",
                      "two replicas streaming from the new primary")


def test_invalid_parameters_are_refused_by_the_api(kubectl, namespace):
    bad = manifest("bad", namespace, extra="  parameters: {port: '5433'}")
    p = kubectl("apply", "-f", "-", input=bad, check=False)
    assert p.returncode != 0 and "port" in p.stderr


def test_missing_storage_class_is_a_condition_not_a_crash(kubectl, namespace, operator):
    ns, name = namespace, "nosc"
    kubectl("apply", "-f", "-", input=manifest(name, ns, instances=1, sync=0).replace(
        "storage: {size: 1Gi}", "storage: {size: 1Gi, storageClassName: does-not-exist}"))
    def progressing():
        st = cluster(kubectl, ns, name).get("status") or {}
        conds = {c["type"]: c for c in st.get("conditions") or []}
        cond = conds.get("Progressing", {})
        return cond.get("status") == "True" and "does-not-exist" in cond.get("message", "") and cond
    cond = eventually(progressing, "a Progressing condition naming the StorageClass", 60)
    assert "StorageClass 'does-not-exist' does not exist" in cond["message"]
    instance = kubectl.json("-n", ns, "get", "pginstance", f"{name}-0")
    assert instance["status"]["phase"] == "Pending"
    assert operator.p.poll() is None  # a condition, not a crash


def test_image_that_does_not_exist_is_reported(kubectl, namespace, operator):
    ns, name = namespace, "noimage"
    kubectl("apply", "-f", "-", input=manifest(name, ns, instances=1, sync=0,
                                               extra="  image: localhost/pgop-postgres:does-not-exist"))
    def reported():
        st = cluster(kubectl, ns, name).get("status") or {}
        text = " ".join(c.get("message", "") for c in st.get("conditions") or [])
        return "ErrImageNeverPull" in text or "ImagePull" in text
    eventually(reported, "the image problem in the PgCluster conditions", 90)
    assert operator.p.poll() is None


def test_parameters_reload_or_roll(kubectl, namespace, operator):
    ns, name = namespace, "params"
    kubectl("apply", "-f", "-", input=manifest(name, ns, instances=2, sync=0))
    wait_ready(kubectl, ns, name, 2)
    pods = [f"{name}-0", f"{name}-1"]
    started = {p: exec_psql(kubectl, ns, p, "select pg_postmaster_start_time()") for p in pods}

    # a reloadable setting reaches every instance without a restart
    kubectl("-n", ns, "patch", "pgcluster", name, "--type=merge", "-p",
            '{"spec":{"parameters":{"work_mem":"8MB"}}}')
    for p in pods:
        eventually(lambda p=p: exec_psql(kubectl, ns, p, "show work_mem") == "8MB", f"work_mem on {p}", 90)
    assert {p: exec_psql(kubectl, ns, p, "select pg_postmaster_start_time()") for p in pods} == started

    # a setting that needs a restart rolls through the instances, the primary last
    kubectl("-n", ns, "patch", "pgcluster", name, "--type=merge", "-p",
            '{"spec":{"parameters":{"work_mem":"8MB","shared_buffers":"64MB"}}}')
    for p in pods:
        eventually(lambda p=p: exec_psql(kubectl, ns, p, "show shared_buffers") == "64MB",
                   f"shared_buffers on {p}", 180)
    restarted = {p: exec_psql(kubectl, ns, p, "select pg_postmaster_start_time()") for p in pods}
    assert all(restarted[p] != started[p] for p in pods)
    assert restarted[f"{name}-1"] < restarted[f"{name}-0"]  # replica first
    # ... and then a switchover to it instead of a restart of the primary in place
    eventually(lambda: (cluster(kubectl, ns, name).get("status") or {}).get("currentPrimary") == f"{name}-1",
               f"{name}-1 primary after the switchover", 120)
    wait_ready(kubectl, ns, name, 2)
    assert exec_psql(kubectl, ns, f"{name}-1", "select pg_is_in_recovery()") == "f"
    assert exec_psql(kubectl, ns, f"{name}-0", "select pg_is_in_recovery()") == "t"


def test_publish_puts_credentials_in_vault_and_config_in_consul(kubectl, namespace, operator, local_env):
    import consul
    import hvac

    ns, name = namespace, "pub"
    kubectl("apply", "-f", "-", input=manifest(name, ns, instances=1, sync=0, extra="  publish: {}"))
    wait_ready(kubectl, ns, name, 1)
    vault = hvac.Client(url=local_env["VAULT_ADDR"], token=local_env["VAULT_TOKEN"])
    path = f"k8s/{ns}/{name}/db"

    def read_vault():
        return vault.secrets.kv.v2.read_secret_version(path=path, mount_point="secret",
                                                       raise_on_deleted_version=True)["data"]["data"]
    doc = eventually(read_vault, "the Vault secret", 30)
    password = secret(kubectl, ns, f"{name}-app", "password")
    assert doc == {"username": "app", "password": password, "host": f"{name}-rw.{ns}.svc",
                   "port": "5432", "dbname": "app", "engine": "postgresql"}
    host, port = local_env["CONSUL_HTTP_ADDR"].split(":")
    kv = consul.Consul(host=host, port=int(port)).kv
    _, items = kv.get(f"config/{path}/", recurse=True)
    config = {i["Key"].rsplit("/", 1)[-1]: i["Value"].decode() for i in items}
    assert config == {"host": f"{name}-rw.{ns}.svc", "port": "5432", "dbname": "app",
                      "engine": "postgresql", "username": "app"}
    # what an application does with it: connect with the credentials from Vault
    with pg_connect(host=service_ip(kubectl, ns, f"{name}-rw"), port=int(doc["port"]),
                    dbname=doc["dbname"], user=doc["username"], password=doc["password"]) as conn:
        assert conn.execute("select current_user").fetchone()[0] == "app"
    # deleting the cluster removes what it published
    kubectl("-n", ns, "delete", "pgcluster", name, "--timeout=60s")
    assert kv.get(f"config/{path}/", recurse=True)[1] is None
    with pytest.raises(hvac.exceptions.InvalidPath):
        read_vault()
