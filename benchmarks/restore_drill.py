"""Backup and restore of a demo-sized home: the RPO and RTO figures the runbook quotes.

Builds a home the way a user does (`optibid demo --days N --until-fresh`: services, simulation, the automation
bringing every layer up to date, then everything stopped), or takes `--home` (a stopped platform's home). Then,
timed, each figure with the load average beside it:

1. `create_backup` of that home (its embedded Postgres started for it): seconds, bytes per part;
2. the peer of the same run: a bare `pg_dump --format=custom` of the same database to a file and a plain copy
   of the lake folder, without encryption, checksums or verification; the ratio backup / peer;
3. the restore into a fresh home: a new embedded Postgres started, then `restore_backup` (verification, roles,
   pg_restore, migrations, home and lake); RTO = both;
4. the peer: `pg_restore` of the bare dump into a new database on the same fresh server, plus a copy of the
   lake folder; the ratio restore / peer;
5. the check that the restored warehouse holds the same rows as the source (count and checksum per silver and
   gold table) and that every lake table is at its backed-up version.

RPO is not a timing: CDC loses nothing Kafka still holds (it replays from the offsets in the restored lake);
files, users and settings lose what came after the last backup (`OPTIBID_BACKUP_CRON`, daily by default).

    python -m benchmarks.restore_drill [--days 7] [--home PATH]   # PATH is kept; built first when missing
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import psycopg.conninfo

from benchmarks.harness import REPO_ROOT, load_average
from infra.backup import create_backup, libpq_env, postgres_tool, restore_backup, server_major
from infra.lake import Lake
from infra.services import embedded_postgres_url, stop_embedded_postgres
from infra.settings import Settings

KEY = "restore drill benchmark key"
WAREHOUSE_SCHEMAS = ("silver", "gold")


def _build_demo_home(home: Path, days: int) -> float:
    """`optibid demo --until-fresh` into `home`. Not fresh within its timeout (a loaded machine, where the live
    load keeps runs queued) still leaves a home with every layer built: the drill goes on, and says so."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTIBID_")}
    env["OPTIBID_HOME"] = str(home)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "demo", "--days", str(days), "--until-fresh", "--timeout", "900"],
        cwd=REPO_ROOT,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        print(f"the demo exited with {done.returncode} (not fresh within its timeout); backing up the home as it is")
    return time.perf_counter() - started


def _table_digests(url: str) -> dict[str, tuple[int, str]]:
    """(rows, md5 of the rows' text in order) of every silver and gold table."""
    out = {}
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "SELECT schemaname || '.' || tablename FROM pg_tables WHERE schemaname = ANY(%s) ORDER BY 1",
            (list(WAREHOUSE_SCHEMAS),),
        ).fetchall()
        for (table,) in tables:
            row = conn.execute(
                f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t"
            ).fetchone()
            assert row is not None
            out[table] = (int(row[0]), str(row[1]))
    return out


def _bare_dump(url: str, target: Path) -> float:
    pg_dump, _ = postgres_tool("pg_dump", server_major(url))
    conninfo, env = libpq_env(url)
    started = time.perf_counter()
    subprocess.run([str(pg_dump), "--format=custom", "--file", str(target), conninfo], env=env, check=True)
    return time.perf_counter() - started


def _bare_restore(url: str, dump: Path) -> float:
    pg_restore, _ = postgres_tool("pg_restore", server_major(url))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE restore_peer")
    peer_url = psycopg.conninfo.make_conninfo(url, dbname="restore_peer")
    conninfo, env = libpq_env(peer_url)
    started = time.perf_counter()
    # The platform's roles exist already on this server (the real restore created them).
    subprocess.run([str(pg_restore), "--single-transaction", "--dbname", conninfo, str(dump)], env=env, check=True)
    return time.perf_counter() - started


def _copy_tree(source: Path, target: Path) -> float:
    started = time.perf_counter()
    shutil.copytree(source, target)
    return time.perf_counter() - started


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=7, help="days of the demo home to build (default 7)")
    parser.add_argument(
        "--home", type=Path, help="a stopped platform's home to back up; built there by the demo when it does not exist"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="optibid-restore-drill-") as tmp_dir:
        tmp = Path(tmp_dir)
        backups = tmp / "backups"
        home = args.home.resolve() if args.home else tmp / "demo_home"
        if not home.exists():
            seconds = _build_demo_home(home, args.days)
            print(f"demo home built ({args.days} days, until fresh): {seconds:.0f} s; {load_average()}")
        source = Settings(home=home, backup_key=KEY, backup_dir=backups)
        target = Settings(home=tmp / "restored_home", backup_key=KEY, backup_dir=backups)
        try:
            source_url = embedded_postgres_url(source)
            lake_dir = source.home_dir / "lake"
            print(f"source: lake {_size(lake_dir) / 1e6:.1f} MB; {load_average()}")

            backup = create_backup(source, source_url, Lake(str(lake_dir)))
            parts = backup.manifest["parts"]
            backup_s = backup.manifest["seconds"]
            plain = {name: part["plain_bytes"] / 1e6 for name, part in parts.items()}
            print(
                f"backup: {backup_s:.2f} s, {backup.size_bytes / 1e6:.1f} MB encrypted (dump "
                f"{plain['postgres.dump']:.1f} MB, lake {plain['lake.tar']:.1f} MB, home {plain['home.tar']:.1f} MB); "
                f"{load_average()}"
            )
            bare_dump = tmp / "bare.dump"
            peer_backup_s = _bare_dump(source_url, bare_dump) + _copy_tree(lake_dir, tmp / "lake_copy")
            print(
                f"peer (bare pg_dump + lake copy): {peer_backup_s:.2f} s; backup / peer "
                f"{backup_s / peer_backup_s:.2f}x; {load_average()}"
            )
            digests = _table_digests(source_url)
            stop_embedded_postgres(source)

            started = time.perf_counter()
            target_url = embedded_postgres_url(target)
            postgres_s = time.perf_counter() - started
            report = restore_backup(target, backup.backup_id, target_url, Lake(str(target.home_dir / "lake")))
            rto = time.perf_counter() - started
            print(
                f"restore into a fresh home: RTO {rto:.2f} s (fresh Postgres {postgres_s:.2f} s, restore "
                f"{report.seconds:.2f} s incl. verification); {load_average()}"
            )
            peer_restore_s = _bare_restore(target_url, bare_dump) + _copy_tree(lake_dir, tmp / "lake_copy_2")
            print(
                f"peer (bare pg_restore + lake copy): {peer_restore_s:.2f} s; restore / peer "
                f"{report.seconds / peer_restore_s:.2f}x; {load_average()}"
            )
            restored = _table_digests(target_url)
            same = restored == digests
            rows = sum(n for n, _ in digests.values())
            print(
                f"restored warehouse: {len(digests)} silver/gold tables, {rows:,} rows, "
                f"{'identical' if same else 'DIFFERENT'} (count + checksum per table); lake tables at their "
                f"backed-up versions: {len(report.lake_versions)}"
            )
            if not same:
                differing = sorted(t for t in digests if restored.get(t) != digests[t])
                raise SystemExit(f"restored tables differ: {', '.join(differing)}")
        finally:
            stop_embedded_postgres(target)
            stop_embedded_postgres(source)


if __name__ == "__main__":
    main()
