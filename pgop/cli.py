"""The `pgop` command (also installed as the kubectl plugin `kubectl-pgop`)."""
from __future__ import annotations

import typer

from pgop.cli_output import OUTPUT_HELP, Output

# add_completion: `pgop --install-completion` / `--show-completion` (bash, zsh, fish, PowerShell)
app = typer.Typer(help="pgop: PostgreSQL clusters and RDS MySQL databases on Kubernetes.",
                  no_args_is_help=True, add_completion=True)
agent_app = typer.Typer(help="The instance manager: PID 1 in each Postgres pod.",
                        no_args_is_help=True)
app.add_typer(agent_app, name="agent")


@app.command()
def run(
    namespace: list[str] = typer.Option([], "--namespace", "-n",
                                        help="Watch only these namespaces (repeatable); "
                                             "default: PGOP_WATCH_NAMESPACES."),
    all_namespaces: bool = typer.Option(False, "--all-namespaces", "-A",
                                        help="Watch the whole cluster (the default when neither -n "
                                             "nor PGOP_WATCH_NAMESPACES is given)."),
    liveness: str | None = typer.Option(None, help="Serve a liveness probe, e.g. http://0.0.0.0:8080/healthz"),
    metrics: str | None = typer.Option(None, help="Serve Prometheus metrics, e.g. http://0.0.0.0:9090/metrics"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    leader_elect: bool = typer.Option(False, "--leader-elect", envvar="PGOP_LEADER_ELECT",
                                      help="Act only while holding a Lease: run several replicas, one active."),
    lease_name: str = typer.Option("pgop-operator", help="The Lease of --leader-elect."),
    lease_namespace: str | None = typer.Option(
        None, help="Its namespace (default: $PGOP_NAMESPACE, else the pod's own namespace)."),
) -> None:
    """Run the operator against the current kubeconfig (or in-cluster config)."""
    import os

    from . import operator
    from .runtime.config import watch_scope
    from .runtime.leader import default_namespace
    try:
        namespaces = watch_scope(namespace, all_namespaces, os.environ)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    election = operator.LeaderElection(lease_namespace or default_namespace(), lease_name) if leader_elect else None
    operator.run(namespaces, liveness=liveness, verbose=verbose, leader_election=election,
                 metrics=metrics)


def _namespace(namespace: str | None) -> str:
    if namespace:
        return namespace
    from kubernetes import config
    try:
        _, ctx = config.list_kube_config_contexts()
        return ctx.get("context", {}).get("namespace") or "default"
    except Exception:
        return "default"


@app.command()
def status(
    cluster: str = typer.Argument(..., help="PgCluster name"),
    namespace: str | None = typer.Option(None, "--namespace", "-n"),
    output: Output = typer.Option(Output.table, "--output", "-o", help=OUTPUT_HELP),
) -> None:
    """Show a PgCluster at a glance: instances, roles, LSN, lag, sync state, heartbeats."""
    from pgop.cli_output import cluster_document, console, dump
    from pgop.cli_views import cluster_table, conditions_table
    from pgop.cluster.observe import ApiReader
    from pgop.runtime.kube import Kube

    ns = _namespace(namespace)
    kube = Kube()
    body = kube.get("PgCluster", ns, cluster)
    if body is None:
        typer.echo(f"PgCluster {ns}/{cluster} not found", err=True)
        raise typer.Exit(1) from None
    # with each agent's liveness Lease beside its PgInstance: the HEARTBEAT column is the newest sign
    instances = ApiReader(kube).instances(ns, cluster)
    if output != Output.table:
        typer.echo(dump(cluster_document(body, instances), output), nl=False)
        return
    out = console()
    out.print(cluster_table(body, instances))
    out.print(conditions_table(body))


@app.command()
def plan(
    filename: str = typer.Option(..., "--filename", "-f", help="PgCluster manifest (YAML)"),
    namespace: str | None = typer.Option(None, "--namespace", "-n"),
    output: Output = typer.Option(Output.table, "--output", "-o", help=OUTPUT_HELP),
) -> None:
    """What the operator would create, change or delete for this manifest, without doing it."""
    import sys
    import uuid

    import yaml

    from pgop.cli_output import console as make_console
    from pgop.cli_output import dump, plan_document, plans_document
    from pgop.cli_views import plan_table
    from pgop.cluster.controller import observe_cluster
    from pgop.cluster.plan import plan_cluster
    from pgop.kernel.model import Cluster
    from pgop.runtime.kube import Kube

    with open(filename) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    kube = Kube()
    table = output == Output.table
    # With -o json|yaml, stdout holds the document only; what a person reads goes to stderr.
    console = make_console() if table else make_console(sys.stderr)
    documents = []
    for doc in docs:
        if doc.get("kind") != "PgCluster":
            console.print(f"skipping {doc.get('kind')} {doc.get('metadata', {}).get('name')}: "
                          "plan covers PgCluster")
            continue
        meta = doc.setdefault("metadata", {})
        ns = meta.get("namespace") or _namespace(namespace)
        meta["namespace"] = ns
        live = kube.get("PgCluster", ns, meta["name"])
        if live is not None:
            # the live object's identity and status, the manifest's spec
            body = {**live, "spec": doc.get("spec", {})}
        else:
            body = {**doc, "metadata": {**meta, "uid": f"(new) {uuid.uuid4()}", "generation": 1}}
        cluster = Cluster.from_object(body)
        errors = cluster.validate()
        if errors:
            for path, reason in errors:
                console.print(f"[red]invalid[/red] {path}: {reason}")
            raise typer.Exit(2) from None
        result = plan_cluster(cluster, observe_cluster(kube, ns, meta["name"], cluster))
        state = "exists" if live is not None else "does not exist yet"
        if not table:
            documents.append(plan_document(ns, meta["name"], live is not None, list(result), result.waiting))
            continue
        if not result:
            console.print(f"PgCluster {ns}/{meta['name']} ({state}): no changes")
        else:
            console.print(plan_table(result, f"PgCluster {ns}/{meta['name']} ({state}): "
                                             f"{len(result)} action(s)"))
        for why in result.waiting:
            console.print(f"  then: {why}")
    if not table:
        typer.echo(dump(documents[0] if len(documents) == 1 else plans_document(documents), output), nl=False)


@app.command()
def promote(
    cluster: str = typer.Argument(..., help="PgCluster name"),
    instance: str = typer.Argument(..., help="The instance to make primary (name, or its ordinal)"),
    namespace: str | None = typer.Option(None, "--namespace", "-n"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the switchover until it is done or refused."),
    timeout: float = typer.Option(180, help="Seconds to follow it."),
) -> None:
    """Switchover: the operator checks the instance (ready, streaming, not fenced), shuts the primary
    down cleanly, promotes the instance once it has all the WAL, and says so (Event SwitchoverDone)."""
    from pgop.cli_ha import promote as run_promote
    run_promote(cluster, instance, _namespace(namespace), wait, timeout)


@app.command()
def fence(
    state: str = typer.Argument(..., help="on | off"),
    cluster: str = typer.Argument(..., help="PgCluster name"),
    instance: str = typer.Argument("all", help="Instance name or ordinal, or all"),
    namespace: str | None = typer.Option(None, "--namespace", "-n"),
) -> None:
    """Fence (stop Postgres, keep pod and volume) or unfence instances; a fenced primary is not
    failed over."""
    from pgop.cli_ha import fence as run_fence
    if state not in ("on", "off"):
        typer.echo("the first argument must be on or off", err=True)
        raise typer.Exit(2) from None
    run_fence(state == "on", cluster, instance, _namespace(namespace))


S3_HELP = "The archive's S3 location when the PgCluster no longer exists"


@app.command()
def backup(
    cluster: str = typer.Argument(..., help="PgCluster name"),
    namespace: str | None = typer.Option(None, "--namespace", "-n"),
    name: str | None = typer.Option(None, "--name", help="PgBackup name (default <cluster>-<UTC time>)."),
    target: str = typer.Option("prefer-replica", "--target", help="prefer-replica | primary"),
    wait: bool = typer.Option(False, "--wait", "-w", help="Follow the backup with a progress bar until it ends."),
) -> None:
    """Take a base backup now: creates a PgBackup; the operator streams it to S3."""
    from pgop.cli_backup import start_backup
    if target not in ("prefer-replica", "primary"):
        typer.echo("--target must be prefer-replica or primary", err=True)
        raise typer.Exit(2) from None
    start_backup(cluster, _namespace(namespace), name, target, wait)


@app.command()
def backups(
    cluster: str = typer.Argument(..., help="PgCluster name (its archive's name in S3)"),
    namespace: str | None = typer.Option(None, "--namespace", "-n"),
    s3_bucket: str | None = typer.Option(None, help=S3_HELP + ": bucket."),
    s3_path: str | None = typer.Option(None, help=S3_HELP + ": spec.backup.s3.path."),
    s3_endpoint: str | None = typer.Option(None, help=S3_HELP + ": endpoint URL."),
    s3_credentials_secret: str | None = typer.Option(None, help=S3_HELP + ": the Secret with its keys."),
    output: Output = typer.Option(Output.table, "--output", "-o", help=OUTPUT_HELP),
) -> None:
    """List the base backups of a cluster from its S3 catalog (not from the API), with the first
    point in time a restore can reach."""
    from pgop.cli_backup import list_catalog, s3_location
    from pgop.runtime.kube import Kube
    ns = _namespace(namespace)
    kube = Kube()
    list_catalog(cluster, ns, s3_location(kube, ns, cluster, s3_bucket, s3_path, s3_endpoint,
                                          s3_credentials_secret), kube, output)


@app.command()
def restore(
    cluster: str = typer.Argument(..., help="The PgCluster whose backups to restore"),
    to: str = typer.Option(..., "--to", help="Name of the new PgCluster"),
    namespace: str | None = typer.Option(None, "--namespace", "-n"),
    time_: str | None = typer.Option(None, "--time", help="Restore to this time (RFC 3339, e.g. 2026-11-22T03:00:00Z)."),
    lsn: str | None = typer.Option(None, "--lsn", help="Restore to this LSN."),
    timeline: str | None = typer.Option(None, "--timeline", help="Recover along this timeline (a number, or "
                                        "current: the backup's); default latest, the archive's newest."),
    backup_name: str | None = typer.Option(None, "--backup", help="Start from this base backup."),
    instances: int | None = typer.Option(None, "--instances", help="Instances of the new cluster (default the source's)."),
    s3_bucket: str | None = typer.Option(None, help=S3_HELP + ": bucket."),
    s3_path: str | None = typer.Option(None, help=S3_HELP + ": spec.backup.s3.path."),
    s3_endpoint: str | None = typer.Option(None, help=S3_HELP + ": endpoint URL."),
    s3_credentials_secret: str | None = typer.Option(None, help=S3_HELP + ": the Secret with its keys."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the PgCluster manifest instead of applying it."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the restore until the new cluster is Ready."),
    timeout: float = typer.Option(1800, help="Seconds to wait for Ready."),
) -> None:
    """Restore a cluster's backups into a new PgCluster, to a point in time or to the end of its WAL."""
    from pgop.cli_backup import restore as run_restore
    run_restore(cluster, to, _namespace(namespace), target_time=time_, target_lsn=lsn, target_timeline=timeline,
                backup=backup_name,
                bucket=s3_bucket, path=s3_path, endpoint=s3_endpoint, credentials_secret=s3_credentials_secret,
                instances=instances, dry_run=dry_run, wait=wait, timeout=timeout)


@app.command()
def psql(
    cluster: str = typer.Argument(..., help="PgCluster name"),
    psql_args: list[str] | None = typer.Argument(None, metavar="[-- PSQL_ARGS...]",
                                                 help="Passed to psql, after `--` (e.g. -- -d app -c 'select 1')."),
    namespace: str | None = typer.Option(None, "--namespace", "-n"),
    replica: bool = typer.Option(False, "--replica", help="A ready replica (least lag) instead of the primary."),
) -> None:
    """psql in the primary's (or a replica's) Postgres pod, via `kubectl exec`; a terminal only
    when stdin is one, so `echo 'select 1' | pgop psql orders` works in scripts."""
    from pgop.cli_day2 import psql as run_psql
    run_psql(cluster, _namespace(namespace), replica, psql_args or [])


@app.command()
def restart(
    cluster: str = typer.Argument(..., help="PgCluster name"),
    instance: str | None = typer.Option(None, "--instance", help="Only this instance (name or ordinal)."),
    namespace: str | None = typer.Option(None, "--namespace", "-n"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the restart until every instance is back."),
    timeout: float = typer.Option(900, help="Seconds to follow it."),
) -> None:
    """Rolling restart of Postgres, done by the operator: one instance at a time, each once the one
    before is ready again, replicas first, the primary last by switchover to an up-to-date replica
    (in place when there is none)."""
    from pgop.cli_day2 import restart as run_restart
    run_restart(cluster, _namespace(namespace), instance, wait, timeout)


@app.command()
def reload(
    cluster: str = typer.Argument(..., help="PgCluster name"),
    namespace: str | None = typer.Option(None, "--namespace", "-n"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow until every agent has reloaded."),
    timeout: float = typer.Option(300, help="Seconds to follow it."),
) -> None:
    """Ask every instance's agent to reload the Postgres configuration (SIGHUP; no restart)."""
    from pgop.cli_day2 import reload as run_reload
    run_reload(cluster, _namespace(namespace), wait, timeout)


@app.command()
def hibernate(
    state: str = typer.Argument(..., help="on | off"),
    cluster: str = typer.Argument(..., help="PgCluster name"),
    namespace: str | None = typer.Option(None, "--namespace", "-n"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow until Hibernated (on) or Ready (off)."),
    timeout: float = typer.Option(600, help="Seconds to follow it."),
) -> None:
    """Hibernate a cluster (every Postgres pod stopped cleanly and deleted, replicas first; volumes,
    Secrets, Services and PgInstances kept; no failover, no scheduled backup) or wake it (the same
    instances come back, the former primary as primary)."""
    from pgop.cli_hibernate import hibernate as run_hibernate
    if state not in ("on", "off"):
        typer.echo("the first argument must be on or off", err=True)
        raise typer.Exit(2) from None
    run_hibernate(state == "on", cluster, _namespace(namespace), wait, timeout)


@app.command()
def destroy(
    cluster: str = typer.Argument(..., help="PgCluster name"),
    instance: str = typer.Argument(..., help="The instance to destroy (name, or its ordinal)"),
    namespace: str | None = typer.Option(None, "--namespace", "-n"),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    force: bool = typer.Option(False, "--force", help="Even when it leaves too few replicas for "
                                                     "spec.synchronousReplicas."),
) -> None:
    """Destroy one replica: its volume (data lost), pods and PgInstance; the operator replaces it with a
    fresh replica cloned from the primary. The primary is refused (promote another first)."""
    from pgop.cli_hibernate import destroy as run_destroy
    run_destroy(cluster, instance, _namespace(namespace), yes, force)


@app.command()
def report(
    cluster: str = typer.Argument(..., help="PgCluster name"),
    namespace: str | None = typer.Option(None, "--namespace", "-n"),
    filename: str | None = typer.Option(None, "--filename", "-f",
                                        help="Where to write the tar.gz (default <cluster>-report-<time>.tar.gz; "
                                             "- for stdout)."),
) -> None:
    """A support bundle: the PgCluster, PgInstances, PgBackups, pods, Services, PVCs, Events and pod
    logs, with every Secret value and password redacted."""
    from pgop.cli_report import report as run_report
    run_report(cluster, _namespace(namespace), filename)


mysqldb_app = typer.Typer(help="MysqlDb (AWS RDS MySQL) databases.", no_args_is_help=True)
app.add_typer(mysqldb_app, name="mysqldb")


@mysqldb_app.command("status")
def mysqldb_status(
    name: str = typer.Argument(..., help="MysqlDb name"),
    namespace: str | None = typer.Option(None, "--namespace", "-n"),
    output: Output = typer.Option(Output.table, "--output", "-o", help=OUTPUT_HELP),
) -> None:
    """The RDS instance, its phase, where its secret and config live, and the last error
    (never the password)."""
    from pgop.cli_output import dump
    from pgop.rds.report import render, status_document
    from pgop.runtime.kube import Kube

    ns = _namespace(namespace)
    body = Kube().get("MysqlDb", ns, name)
    if body is None:
        typer.echo(f"MysqlDb {ns}/{name} not found", err=True)
        raise typer.Exit(1) from None
    typer.echo(render(body) if output == Output.table else dump(status_document(body), output), nl=output == Output.table)


@mysqldb_app.command("rotate")
def mysqldb_rotate(
    name: str = typer.Argument(..., help="MysqlDb name"),
    namespace: str | None = typer.Option(None, "--namespace", "-n"),
) -> None:
    """Rotate the master password: the operator writes the new one to Vault (check-and-set), then
    to RDS, then makes it the one applications read. The CLI never sees it."""
    from pgop.cli_mysqldb import rotate
    rotate(name, _namespace(namespace))


@mysqldb_app.command("snapshots")
def mysqldb_snapshots(
    name: str = typer.Argument(..., help="MysqlDb name"),
    namespace: str | None = typer.Option(None, "--namespace", "-n"),
) -> None:
    """The RDS snapshots of the MysqlDb's instance and its point-in-time window (your AWS credentials)."""
    from pgop.cli_mysqldb import snapshots
    snapshots(name, _namespace(namespace))


@mysqldb_app.command("restore")
def mysqldb_restore(
    name: str = typer.Argument(..., help="MysqlDb to restore"),
    to: str = typer.Option(..., "--to", help="Name of the new MysqlDb"),
    snapshot: str | None = typer.Option(None, "--snapshot", help="DB snapshot identifier"),
    time: str | None = typer.Option(None, "--time", help="Point in time (RFC 3339, e.g. 2026-11-30T14:05:00Z)"),
    namespace: str | None = typer.Option(None, "--namespace", "-n"),
) -> None:
    """A new MysqlDb from a snapshot, a point in time, or (neither given) the latest restorable time;
    it gets its own password in Vault and config in Consul."""
    from pgop.cli_mysqldb import restore
    restore(name, _namespace(namespace), to, snapshot, time)


@app.command()
def version() -> None:
    """Print the pgop version."""
    from importlib.metadata import version as v
    typer.echo(v("pgop"))


# ------------------------------------------------------------------------ pgop agent (in pods)

def _agent_logging(verbose: bool) -> None:
    import os

    from .runtime import logs
    try:
        logs.configure(verbose, logs.pod_fields(os.environ))
    except ValueError as error:
        typer.echo(f"pgop agent: {error}", err=True)
        raise typer.Exit(2) from None


@agent_app.command("run")
def agent_run(
    interval: float | None = typer.Option(None, help="Seconds between turns of the loop "
                                             "(default: PGOP_HEARTBEAT_INTERVAL or 2)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run postgres and keep it as its PgInstance says (PID 1 of the Postgres pod)."""
    import dataclasses

    from .agent import kube, loop
    from .agent.settings import AgentSettings, SettingsError
    _agent_logging(verbose)
    try:
        settings = AgentSettings.from_env()
        settings.check_user()
    except SettingsError as error:
        typer.echo(f"pgop agent: {error}", err=True)
        raise typer.Exit(2) from None
    if interval is not None:
        settings = dataclasses.replace(settings, interval=interval)
    raise typer.Exit(loop.run(settings, kube.store_from_env(settings.namespace)))


@agent_app.command("bootstrap")
def agent_bootstrap(
    mode: str = typer.Option(..., "--mode", help="initdb | basebackup | recovery"),
    primary_host: str | None = typer.Option(None, help="Clone from this host instead of the "
                                               "cluster's -rw Service (basebackup)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Fill the empty volume once: initdb, pg_basebackup from the primary, or a restore."""
    from .agent import bootstrap
    _agent_logging(verbose)
    try:
        code = bootstrap.main(mode, primary_host=primary_host)
    except (RuntimeError, ValueError) as error:  # settings, credentials, commands: said plainly
        typer.echo(f"pgop agent bootstrap: {error}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@agent_app.command("wal-push")
def agent_wal_push(
    path: str = typer.Argument(..., help="The file to archive (PostgreSQL's %p)."),
) -> None:
    """archive_command: compress one WAL file to S3 (PGOP_S3_* settings; through the long-lived
    pusher unless PGOP_WAL_PUSHER=0); 0 = archived."""
    from pgop.backup.pusher import push
    raise typer.Exit(push(path))


@agent_app.command("wal-fetch")
def agent_wal_fetch(
    name: str = typer.Argument(..., help="The WAL file wanted (PostgreSQL's %f)."),
    target: str = typer.Argument(..., help="Where to put it (PostgreSQL's %p)."),
) -> None:
    """restore_command: fetch one WAL file from S3 (prefetching the next ones: PGOP_WAL_PREFETCH
    segments, default 8, 0 = off); 1 = not in the archive."""
    from pgop.backup.walget import fetch
    raise typer.Exit(fetch(name, target))


@agent_app.command("backup")
def agent_backup(
    name: str = typer.Option(..., "--name", help="The backup's name (the PgBackup's)."),
    host: str | None = typer.Option(None, "--host", help="Back up the instance at this address, "
                                       "as the replication role (a backup pod); default: the local "
                                       "Postgres over its socket."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Stream a base backup to S3 (PGOP_S3_* settings); prints the catalog document once it is
    complete. In a backup pod, also the termination message the backup controller reads."""
    from pgop.agent.backups import run_backup
    raise typer.Exit(run_backup(name, host, verbose))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
