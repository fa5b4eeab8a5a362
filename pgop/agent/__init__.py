"""The instance manager: `pgop agent`, PID 1 in every Postgres pod.

One module per concern, as Patroni's `patroni/postgresql/`:

- settings:     what the pod tells the agent (environment variables)
- credentials:  passwords from the mounted secret files, and the passfile libpq reads them from
- commands:     PostgreSQL binaries run as the right OS user, children tracked for reaping
- bootstrap:    initdb / pg_basebackup / restore from S3 into an empty volume
- backups:      the backup engine of pgop.backup as the pod runs it: base backup, restore
- config:       postgresql.conf and pg_hba.conf on disk
- config_change: what a change costs (reload or restart), pure
- postmaster:   postgres as a child process: start, stop, restart, reload; zombie reaping as PID 1
- replication:  slots and synchronous_standby_names on a primary; LSNs on both sides (queries)
- streaming:    which slots and synchronous names a primary should have, pure
- state:        one read of what runs (role, LSNs, pending restarts, slots, standbys)
- observed:     what that read returns (PostgresState, Archiver), pure data
- ha:           the decision, pure: what is wanted + what runs -> actions
- loop:         the loop that reads, decides, acts and reports, top to bottom
- rejoin:       a former primary becomes a replica again: pg_rewind, or a fresh clone
- status:       the PgInstance status the agent writes (pure)
- kube:         the Kubernetes side (read my PgInstance, list my cluster's, patch status), injectable
- health:       /healthz and /readyz for the kubelet
- metrics:      the instance's Prometheus samples from an observation and one scrape's reads, pure
- exporter:     /metrics: the scrape-time reads and the HTTP server, beside the loop

What the pod gives the agent (the pod contract, pgop/kernel/podenv.py; pgop/specs/pods.py builds it):

    PGOP_CLUSTER, PGOP_INSTANCE, PGOP_NAMESPACE   which PgInstance this is (required)
    PGDATA                                         the data directory; its parent is on the volume
    PGOP_SECRETS_DIR                               {superuser,replication,app}/{username,password}
    PGOP_POD_NAME, PGOP_POD_UID, PGOP_POD_IP, PGOP_NODE_NAME   reported in status
    PGOP_AGENT_PORT                                /healthz and /readyz (default 8008)
    PGOP_METRICS_PORT                              /metrics, the container port `metrics` (default 9187; 0: off)

and a service account that may get/list PgInstances and patch pginstances/status (specs/rbac.py).
Optional, with the pod's defaults: PGOP_HEARTBEAT_INTERVAL (2 s between turns of the loop),
PGOP_STATUS_REFRESH (5 s: the status is written when it changes, else this often as a heartbeat),
PGOP_ISOLATION_TIMEOUT (10 s:
a primary alone this long stops itself; 0 never), PGOP_MAX_START_ATTEMPTS (3),
PGOP_PRIMARY_HOST (<cluster>-rw.<namespace>.svc) and PGOP_PRIMARY_PORT (5432), PGOP_PG_BINDIR
(postgres on PATH), and for running several instances on one machine PGOP_PG_PORT,
PGOP_SOCKET_DIR, PGOP_LISTEN_ADDRESSES, PGOP_CONNECT_HOST, PGOP_RUN_DIR, PGOP_POSTGRES_LOG,
PGOP_RUN_AS (when started as root) and PGOP_INSTANCE_STORE (PgInstances as JSON files instead of
the API server).
"""
