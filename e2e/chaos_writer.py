"""The writer that runs inside a pod of the test namespace (see e2e/chaos.py, which ships this file
as the pod's program): one row per transaction through `<cluster>-rw`, every answer logged as a
JSON line on stdout.

Only the standard library and psycopg (both in the postgres image's /opt/pgop), so it also runs
on the host against a local server. Settings come from the environment:

    PGHOST PGPORT PGDATABASE PGUSER PGPASSWORD   where to write (the app credentials)
    RUN               a name for this run (rows carry it, so runs share one table)
    INTERVAL          seconds between two attempts (0.02)
    MAX_COUNT         attempts at most (100000)
    MAX_SECONDS       seconds at most (900)
    ATTEMPT_TIMEOUT   seconds without an answer before the next attempt goes on a new connection;
                      the unanswered one is never cancelled (a cancel during a synchronous-commit
                      wait would turn it into a local-only commit reported as success) and logs
                      its answer whenever it comes (5)
    STOP_FILE         the writer ends when this file exists (/tmp/stop)

Log lines (times are the writer's wall clock, time.time()):
    {"ev": "ack", "seq", "sent", "ack", "server", "sysid", "tl", "ckpt_tl", "lsn", "late"}
    {"ev": "error", "seq", "sent", "at", "error"}       (seq null: the table could not be made)
    {"ev": "abandoned", "seq", "sent", "at"}            no answer yet after ATTEMPT_TIMEOUT
    {"ev": "start"|"ready"|"done", ...}

`synchronous_commit` is never set here: the writer commits as the cluster is configured.
"""
from __future__ import annotations

import json
import os
import queue
import threading
import time

import psycopg

TABLE = "pgop_chaos_writes"
CREATE = f"""create table if not exists {TABLE} (
    run text not null,
    seq bigint not null,
    sent_at timestamptz not null,
    server_addr inet,
    system_identifier bigint not null,
    timeline int not null,
    checkpoint_timeline int not null,
    lsn pg_lsn not null,
    primary key (run, seq))"""
# Identity of the server in the same statement as the write. The timeline is the one WAL is being
# written on (pg_walfile_name of the insert position): pg_control_checkpoint() shows a promotion's
# new timeline only after the next checkpoint.
INSERT = f"""insert into {TABLE}
select %(run)s, %(seq)s, to_timestamp(%(sent)s), inet_server_addr(), s.system_identifier,
       ('x' || substr(pg_walfile_name(l.lsn), 1, 8))::bit(32)::int, c.timeline_id, l.lsn
from pg_control_system() s, pg_control_checkpoint() c, (select pg_current_wal_lsn() as lsn) l
returning host(server_addr), system_identifier::text, timeline, checkpoint_timeline, lsn::text"""

_out = threading.Lock()


def log(**event) -> None:
    with _out:
        print(json.dumps(event), flush=True)


def connect() -> psycopg.Connection:
    # Keepalives and tcp_user_timeout end a connection to a peer that vanished from the network;
    # a server that is alive but waits (e.g. for a synchronous standby) keeps it open.
    return psycopg.connect(connect_timeout=3, autocommit=True, application_name="pgop-chaos-writer",
                           keepalives=1, keepalives_idle=2, keepalives_interval=1, keepalives_count=3,
                           tcp_user_timeout=5000)


class Worker(threading.Thread):
    """One connection, one attempt at a time. Abandoned by the main loop when an answer takes
    too long: it then finishes the attempt it has, logs the answer, and ends."""

    def __init__(self, run: str):
        super().__init__(daemon=True)
        self.run_name = run
        self.todo: queue.Queue = queue.Queue()
        self.done = threading.Event()
        self.failed = False
        self.abandoned = False
        self.conn: psycopg.Connection | None = None

    def run(self) -> None:
        while True:
            item = self.todo.get()
            if item is None:
                break
            seq, sent = item
            self.attempt(seq, sent)
            self.done.set()
            if self.abandoned:
                break
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass

    def attempt(self, seq: int, sent: float) -> None:
        try:
            if self.conn is None or self.conn.closed:
                self.conn = connect()
            row = self.conn.execute(INSERT, {"run": self.run_name, "seq": seq, "sent": sent}).fetchone()
            assert row is not None
            log(ev="ack", seq=seq, sent=sent, ack=time.time(), server=row[0], sysid=row[1], tl=row[2],
                ckpt_tl=row[3], lsn=row[4], late=self.abandoned)
            self.failed = False
        except Exception as e:
            log(ev="error", seq=seq, sent=sent, at=time.time(), late=self.abandoned,
                error=f"{type(e).__name__}: {str(e).strip()[:300]}")
            self.failed = True
            if self.conn is not None:
                try:
                    self.conn.close()
                except Exception:
                    pass
            self.conn = None


def make_table(deadline: float, stop_file: str) -> bool:
    while time.time() < deadline and not os.path.exists(stop_file):
        try:
            with connect() as conn:
                conn.execute(CREATE)
            return True
        except Exception as e:
            log(ev="error", seq=None, sent=time.time(), at=time.time(), late=False,
                error=f"{type(e).__name__}: {str(e).strip()[:300]}")
            time.sleep(0.5)
    return False


def main() -> None:
    run = os.environ.get("RUN", "run")
    interval = float(os.environ.get("INTERVAL", "0.02"))
    max_count = int(os.environ.get("MAX_COUNT", "100000"))
    max_seconds = float(os.environ.get("MAX_SECONDS", "900"))
    attempt_timeout = float(os.environ.get("ATTEMPT_TIMEOUT", "5"))
    stop_file = os.environ.get("STOP_FILE", "/tmp/stop")
    started = time.time()
    deadline = started + max_seconds
    log(ev="start", run=run, at=started, interval=interval, max_count=max_count, max_seconds=max_seconds)
    if not make_table(deadline, stop_file):
        log(ev="done", at=time.time(), attempts=0, reason="no table")
        return
    log(ev="ready", at=time.time())

    worker = Worker(run)
    worker.start()
    abandoned: list[Worker] = []
    backoff = 0.0
    seq = 0
    while seq < max_count and time.time() < deadline and not os.path.exists(stop_file):
        seq += 1
        sent = time.time()
        worker.done.clear()
        worker.todo.put((seq, sent))
        if not worker.done.wait(attempt_timeout):
            log(ev="abandoned", seq=seq, sent=sent, at=time.time())
            worker.abandoned = True
            worker.todo.put(None)
            abandoned = [w for w in abandoned if w.is_alive()] + [worker]
            if len(abandoned) > 50:  # bounded: stop rather than pile up threads and connections
                log(ev="done", at=time.time(), attempts=seq, reason="too many unanswered attempts")
                return
            worker = Worker(run)
            worker.start()
            continue
        if worker.failed:
            backoff = min(0.5, max(0.05, backoff * 2))
        else:
            backoff = 0.0
        pause = max(interval, backoff) - (time.time() - sent)
        if pause > 0:
            time.sleep(pause)
    worker.todo.put(None)
    worker.join(attempt_timeout)
    # Attempts still unanswered get a bounded time to answer before the log closes.
    for w in abandoned:
        w.join(max(0.0, 10 - (time.time() - sent)))
    log(ev="done", at=time.time(), attempts=seq, reason="stopped")


if __name__ == "__main__":
    main()
