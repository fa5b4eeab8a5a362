"""The `pgop` command (also installed as the kubectl plugin `kubectl-pgop`)."""
from __future__ import annotations

from typing import Optional

import typer

app = typer.Typer(help="pgop: PostgreSQL clusters and RDS MySQL databases on Kubernetes.",
                  no_args_is_help=True, add_completion=False)
agent_app = typer.Typer(help="The instance manager: PID 1 in each Postgres pod.",
                        no_args_is_help=True)
app.add_typer(agent_app, name="agent")


@app.command()
def run(
    namespace: list[str] = typer.Option([], "--namespace", "-n",
                                        help="Watch these namespaces (repeatable)."),
    all_namespaces: bool = typer.Option(False, "--all-namespaces", "-A",
                                        help="Watch the whole cluster (the default when no -n)."),
    liveness: Optional[str] = typer.Option(None, help="Serve a liveness probe, e.g. http://0.0.0.0:8080/healthz"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the operator against the current kubeconfig (or in-cluster config)."""
    from . import operator
    operator.run(namespace, clusterwide=all_namespaces or not namespace, liveness=liveness,
                 verbose=verbose)


@app.command()
def version() -> None:
    """Print the pgop version."""
    from importlib.metadata import version as v
    typer.echo(v("pgop"))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
