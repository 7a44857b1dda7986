"""Backups of a whole platform: the warehouse (Postgres, which also holds the Dagster instance's runs, events
and schedules), the home's state files (Dagster home, the generated JWT keyring, the MLflow store) and the
lake's Delta tables, encrypted and checksummed; restore into a fresh home.

What belongs here: taking, listing, verifying, pruning and restoring backups. The CLI (`optibid backup`) and
the nightly asset call these; nothing here knows about Dagster.

A backup is a folder `<OPTIBID_BACKUP_DIR>/<id>/` (the id is the UTC start time), written under a hidden name
and renamed once it is complete and verified, so a listed backup is always whole:
- `manifest.json`: what is inside (parts, their plaintext and ciphertext SHA-256 and sizes, the lake's root and
  kind, the Delta version of each table, the Postgres server and dump tool versions) and an HMAC of all that,
  so a manifest edited or swapped in from another key's backup fails verification.
- `postgres.dump.enc`: `pg_dump --format=custom` of the warehouse, one consistent snapshot.
- `home.tar.enc`, `lake.tar.enc`: tar archives of the home's state and of every Delta table at the version
  read after the dump (for each table, its log up to that version and the data files that version reads).

The lake, a local folder or `s3://bucket/prefix`, is read and written through a pyarrow filesystem (local, or
S3 with the options delta-rs uses), file by file and streamed. Tables are archived relative to the lake root,
so a backup restores into any empty lake: another folder, bucket or prefix, or from one kind to the other.

Consistency: the lake is read after the database snapshot, so it is never behind it. Silver's watermarks then
point at or before the restored bronze versions (silver catches up by itself), and the CDC consumer's Kafka
offsets, which live in the same Delta commits as the rows (`ingestion.cdc.delta`), resume exactly after the
restored rows: whatever Kafka still holds beyond them is read again, once.

Encryption: AES-256-GCM in 1 MiB chunks, keys derived with scrypt from `OPTIBID_BACKUP_KEY` and a random
salt per backup. Each chunk's nonce is a random per-part prefix and the chunk number, and its associated data
names the part and says whether it is the last chunk, so chunks cannot be reordered, moved between parts or
cut off without detection.

Postgres tools: `pg_dump`/`pg_restore` of the server's major version, from the pgserver wheel (the embedded
server's own binaries) or from `/usr/lib/postgresql/<major>/bin`, else a newer one on the PATH.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import psycopg
import pyarrow.fs as pafs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from psycopg import sql

from infra.lake import Lake
from infra.settings import Settings

FORMAT = "optibid-backup/1"
MAGIC = b"OBK1"
CHUNK = 1 << 20
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
MIN_KEY_CHARS = 16
# Home state that cannot be rebuilt from the warehouse or the lake. Reports, logs, the landing folder and the
# embedded services' data are not: reports are rebuilt, the warehouse is in the dump.
HOME_PARTS = ("dagster_home", "jwt_keys", "mlflow")
DUMP_PART, HOME_PART, LAKE_PART = "postgres.dump", "home.tar", "lake.tar"


class BackupError(RuntimeError):
    """A backup could not be taken, verified or restored; the message says what to fix."""


# --- keys and encryption ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupKeys:
    """The keys of one backup, derived from the secret and the backup's salt."""

    salt: bytes
    encryption: bytes
    mac: bytes

    @classmethod
    def derive(cls, secret: str, salt: bytes | None = None) -> BackupKeys:
        if len(secret) < MIN_KEY_CHARS:
            raise BackupError(f"OPTIBID_BACKUP_KEY must be at least {MIN_KEY_CHARS} characters")
        salt = salt or os.urandom(16)
        material = Scrypt(salt=salt, length=64, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(secret.encode())
        return cls(salt, material[:32], material[32:])


def _aad(part: str, index: int, final: bool) -> bytes:
    return f"{FORMAT}|{part}|{index}|{'final' if final else 'more'}".encode()


class _EncryptingWriter(io.RawIOBase):
    """A writable stream that encrypts what it is given into `out`, chunk by chunk, and hashes both sides."""

    def __init__(self, out: IO[bytes], keys: BackupKeys, part: str) -> None:
        self.out, self.part = out, part
        self.aead = AESGCM(keys.encryption)
        self.prefix = os.urandom(8)
        self.buffer = bytearray()
        self.index = 0
        self.plain_sha, self.cipher_sha = hashlib.sha256(), hashlib.sha256()
        self.plain_bytes = self.cipher_bytes = 0
        self._emit(MAGIC + self.prefix)

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.plain_sha.update(data)
        self.plain_bytes += len(data)
        self.buffer += data
        while len(self.buffer) > CHUNK:
            self._chunk(bytes(self.buffer[:CHUNK]), final=False)
            del self.buffer[:CHUNK]
        return len(data)

    def finish(self) -> dict[str, Any]:
        self._chunk(bytes(self.buffer), final=True)
        self.buffer.clear()
        return {
            "plain_sha256": self.plain_sha.hexdigest(),
            "plain_bytes": self.plain_bytes,
            "cipher_sha256": self.cipher_sha.hexdigest(),
            "cipher_bytes": self.cipher_bytes,
        }

    def _chunk(self, data: bytes, final: bool) -> None:
        nonce = self.prefix + self.index.to_bytes(4, "big")
        sealed = self.aead.encrypt(nonce, data, _aad(self.part, self.index, final))
        self._emit(len(sealed).to_bytes(4, "big") + sealed)
        self.index += 1

    def _emit(self, data: bytes) -> None:
        self.out.write(data)
        self.cipher_sha.update(data)
        self.cipher_bytes += len(data)


def decrypt_chunks(path: Path, keys: BackupKeys, part: str) -> Iterator[bytes]:
    """The plaintext of an encrypted part, chunk by chunk; raises `BackupError` on any tampering."""
    aead = AESGCM(keys.encryption)
    with path.open("rb") as f:
        header = f.read(12)
        if len(header) != 12 or header[:4] != MAGIC:
            raise BackupError(f"{path.name}: not an OptiBid backup part")
        prefix, index = header[4:], 0
        while True:
            size_bytes = f.read(4)
            if len(size_bytes) != 4:
                raise BackupError(f"{path.name}: truncated (no final chunk)")
            sealed = f.read(int.from_bytes(size_bytes, "big"))
            nonce = prefix + index.to_bytes(4, "big")
            final = f.peek(1)[:1] == b"" if hasattr(f, "peek") else False
            try:
                yield aead.decrypt(nonce, sealed, _aad(part, index, final))
            except InvalidTag:
                raise BackupError(f"{path.name}: chunk {index} does not decrypt (wrong key, or altered)") from None
            if final:
                return
            index += 1


class _DecryptingReader(io.RawIOBase):
    """A readable stream over `decrypt_chunks` (for tarfile and pg_restore's stdin)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks, self.pending = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self.pending:
            try:
                self.pending = next(self.chunks)
            except StopIteration:
                return 0
        n = min(len(target), len(self.pending))
        target[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n


# --- Postgres tools ---------------------------------------------------------------------------------------


def server_major(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        return int(conn.execute("SHOW server_version_num").fetchone()[0]) // 10000  # type: ignore[index]


def _tool_major(binary: Path) -> int | None:
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30).stdout
    except OSError:
        return None
    match = re.search(r"\) (\d+)", out)
    return int(match.group(1)) if match else None


def _candidate_bin_dirs() -> list[Path]:
    dirs = []
    try:
        import pgserver

        dirs.append(Path(pgserver.__file__).parent / "pginstall" / "bin")
    except ImportError:
        pass
    dirs += sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    path_tool = shutil.which("pg_dump")
    if path_tool:
        dirs.append(Path(path_tool).parent)
    return [d for d in dirs if d.is_dir()]


def postgres_tool(name: str, major: int) -> tuple[Path, int]:
    """`pg_dump` or `pg_restore` of exactly `major` if there is one, else the oldest newer one."""
    found: list[tuple[int, Path]] = []
    for directory in _candidate_bin_dirs():
        binary = directory / name
        version = _tool_major(binary) if binary.exists() else None
        if version is not None and version >= major:
            found.append((version, binary))
    if not found:
        raise BackupError(
            f"no {name} of PostgreSQL {major} or newer: install postgresql-client-{major} "
            "(the embedded server's tools come with the pgserver wheel)"
        )
    version, binary = min(found)
    return binary, version


def libpq_env(database_url: str) -> tuple[str, dict[str, str]]:
    """The URL without its password, and an environment carrying the password (not on the command line)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(database_url)
    env = dict(os.environ)
    password = params.pop("password", None)
    if password:
        env["PGPASSWORD"] = str(password)
    return make_conninfo(**params), env


# --- lake ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LakeStore:
    """A lake root as a path on a pyarrow filesystem: backups read and restores write local and S3 lakes the
    same way, object by object and streamed."""

    filesystem: pafs.FileSystem
    root: str
    kind: str

    @classmethod
    def of(cls, lake: Lake) -> _LakeStore:
        if lake.is_local:
            # resolved because delta-rs reports a local table's files under its canonical path
            root = Path(lake.root.removeprefix("file://")).resolve()
            return cls(pafs.LocalFileSystem(), str(root), "local")
        scheme, _, path = lake.root.partition("://")
        if scheme not in ("s3", "s3a"):
            raise BackupError(f"the lake at {lake.root}: backups cover local and s3:// lakes only")
        return cls(pafs.S3FileSystem(**lake.arrow_s3_options()), path.rstrip("/"), "s3")

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def path_of(self, uri: str) -> str:
        """The filesystem path of a file URI as delta-rs gives it (`/abs/path`, `file://...`, `s3://...`)."""
        return uri.removeprefix("file://") if self.kind == "local" else uri.partition("://")[2]

    def tables(self) -> list[str]:
        found = []
        for layer in self.filesystem.get_file_info(pafs.FileSelector(self.root, allow_not_found=True)):
            if layer.type != pafs.FileType.Directory:
                continue
            for table in self.filesystem.get_file_info(pafs.FileSelector(layer.path)):
                if (
                    table.type == pafs.FileType.Directory
                    and self.filesystem.get_file_info(f"{table.path}/_delta_log").type != pafs.FileType.NotFound
                ):
                    found.append(f"{layer.base_name}/{table.base_name}")
        return sorted(found)

    def refuse_restore_into(self, lake: Lake) -> None:
        """Refuse a bucket that is not there (it is the operator's to create, with its region and policies) and a
        lake that already holds tables."""
        if self.kind == "s3":
            bucket = self.root.split("/", 1)[0]
            if self.filesystem.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise BackupError(f"the bucket {bucket} of the lake at {lake.root} does not exist: create it first")
        if self.tables():
            raise BackupError(f"the lake at {lake.root} already holds tables: restore into an empty lake")

    def write(self, relative: str, source: IO[bytes]) -> None:
        path = self.path(relative)
        if self.kind == "local":
            # object stores have no folders; a local filesystem needs them
            self.filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.filesystem.open_output_stream(path, compression=None) as out:
            shutil.copyfileobj(source, out, CHUNK)


def lake_tables(lake: Lake) -> list[str]:
    """`layer/name` of every Delta table under the lake root."""
    return _LakeStore.of(lake).tables()


def _is_log_entry_up_to(name: str, version: int) -> bool:
    """Whether a `_delta_log` entry is one a reader of `version` may need: a commit or checkpoint up to it.
    `_last_checkpoint` is not: it may name a checkpoint newer than `version`, and readers find the newest
    checkpoint by listing the log when it is absent."""
    stem = name.split(".", 1)[0]
    return stem.isdigit() and int(stem) <= version


def _add_lake(tar: tarfile.TarFile, lake: Lake) -> tuple[str, dict[str, int]]:
    """Every table at its current version into `tar` as `<layer>/<name>/...`; the lake's kind and the versions."""
    store = _LakeStore.of(lake)
    versions: dict[str, int] = {}
    for name in store.tables():
        layer, table_name = name.split("/", 1)
        table = lake.table(layer, table_name)
        if table is None:
            continue
        version = table.version()
        versions[name] = version
        table_path = store.path(name)
        # One listing gives tar the sizes of the log entries and data files alike (one request per 1,000 objects
        # on S3, not one per file).
        objects = {
            info.path: info
            for info in store.filesystem.get_file_info(pafs.FileSelector(table_path, recursive=True))
            if info.type == pafs.FileType.File
        }
        log_dir = f"{table_path}/_delta_log"
        log = sorted(
            path
            for path, info in objects.items()
            if path.rpartition("/")[0] == log_dir and _is_log_entry_up_to(info.base_name, version)
        )
        data = sorted(store.path_of(uri) for uri in table.file_uris())
        # Data before the log: a restore cut short leaves no table that reads files it lacks.
        for path in data + log:
            if not path.startswith(f"{table_path}/"):
                raise BackupError(f"{name} version {version} reads {path}, outside the table's folder")
            info = objects.get(path)
            if info is None:
                raise BackupError(f"{name} version {version} reads {path}, which is missing (vacuumed?)")
            member = tarfile.TarInfo(path.removeprefix(f"{store.root}/"))
            member.size = info.size
            member.mtime = int(info.mtime.timestamp()) if info.mtime else 0
            with store.filesystem.open_input_stream(path, compression=None, buffer_size=CHUNK) as source:
                tar.addfile(member, source)
    return store.kind, versions


def _check_restored(lake: Lake, versions: dict[str, int]) -> dict[str, int]:
    """Every backed-up table opens at its backed-up version; the versions."""
    restored = {}
    for name, version in versions.items():
        layer, table_name = name.split("/", 1)
        table = lake.table(layer, table_name)
        if table is None or table.version() != version:
            raise BackupError(f"lake table {name} did not restore to version {version}")
        restored[name] = version
    return restored


# --- create ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupInfo:
    """One backup on disk, as `list` shows it."""

    backup_id: str
    path: Path
    manifest: dict[str, Any]

    @property
    def created_at(self) -> datetime:
        return datetime.fromisoformat(self.manifest["created_at"])

    @property
    def size_bytes(self) -> int:
        return sum(int(p["cipher_bytes"]) for p in self.manifest["parts"].values())


def _secret(settings: Settings) -> str:
    if settings.backup_key is None:
        raise BackupError("OPTIBID_BACKUP_KEY is not set: backups need a key to be encrypted with")
    return settings.backup_key.get_secret_value()


def _manifest_mac(manifest: dict[str, Any], keys: BackupKeys) -> str:
    body = json.dumps({k: v for k, v in manifest.items() if k != "hmac"}, sort_keys=True).encode()
    return hmac.new(keys.mac, body, hashlib.sha256).hexdigest()


def _encrypt_part(folder: Path, part: str, keys: BackupKeys) -> tuple[_EncryptingWriter, IO[bytes]]:
    out = (folder / f"{part}.enc").open("wb")
    return _EncryptingWriter(out, keys, part), out


def create_backup(settings: Settings, database_url: str, lake: Lake) -> BackupInfo:
    """Take, verify and publish a backup; the backup."""
    started = time.perf_counter()
    keys = BackupKeys.derive(_secret(settings))
    backup_dir = settings.resolved_backup_dir
    backup_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(backup_dir, 0o700)
    created_at = datetime.now(UTC)
    backup_id = created_at.strftime("%Y%m%dT%H%M%S%fZ")
    partial = backup_dir / f".{backup_id}.partial"
    partial.mkdir()
    try:
        parts: dict[str, Any] = {}
        major = server_major(database_url)
        roles = database_roles(database_url)
        pg_dump, dump_major = postgres_tool("pg_dump", major)
        conninfo, env = libpq_env(database_url)
        writer, out = _encrypt_part(partial, DUMP_PART, keys)
        with (
            out,
            subprocess.Popen(
                [str(pg_dump), "--format=custom", "--compress=6", "--dbname", conninfo],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            ) as dump,
        ):
            assert dump.stdout is not None
            while block := dump.stdout.read(CHUNK):
                writer.write(block)
            error = dump.stderr.read().decode() if dump.stderr else ""
            if dump.wait() != 0:
                raise BackupError(f"pg_dump failed: {error.strip()}")
            parts[DUMP_PART] = writer.finish()

        writer, out = _encrypt_part(partial, HOME_PART, keys)
        with out:
            with tarfile.open(fileobj=writer, mode="w|gz") as tar:  # type: ignore[call-overload]
                for name in HOME_PARTS:
                    if (settings.home_dir / name).exists():
                        tar.add(settings.home_dir / name, arcname=name)
            parts[HOME_PART] = writer.finish()

        writer, out = _encrypt_part(partial, LAKE_PART, keys)
        with out:
            # Parquet is compressed already: plain tar.
            with tarfile.open(fileobj=writer, mode="w|", copybufsize=CHUNK) as tar:  # type: ignore[call-overload]
                lake_kind, versions = _add_lake(tar, lake)
            parts[LAKE_PART] = writer.finish()

        manifest: dict[str, Any] = {
            "format": FORMAT,
            "backup_id": backup_id,
            "created_at": created_at.isoformat(),
            "seconds": 0.0,
            "postgres": {"server_major": major, "dump_tool_major": dump_major, "roles": roles},
            "lake": {"root": lake.root, "kind": lake_kind, "versions": versions},
            "home_parts": [p for p in HOME_PARTS if (settings.home_dir / p).exists()],
            "parts": parts,
            "kdf": {"scrypt": [SCRYPT_N, SCRYPT_R, SCRYPT_P], "salt": base64.b64encode(keys.salt).decode()},
        }
        manifest["seconds"] = round(time.perf_counter() - started, 3)
        manifest["hmac"] = _manifest_mac(manifest, keys)
        (partial / "manifest.json").write_text(json.dumps(manifest, indent=2))
        verify_backup(settings, partial)
        final = backup_dir / backup_id
        partial.rename(final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return BackupInfo(backup_id, final, manifest)


# --- list, verify, prune ------------------------------------------------------------------------------------


def list_backups(settings: Settings) -> list[BackupInfo]:
    """Every published backup, newest first (half-written ones are hidden until complete)."""
    folder = settings.resolved_backup_dir
    if not folder.exists():
        return []
    found = []
    for path in folder.iterdir():
        manifest_path = path / "manifest.json"
        if path.name.startswith(".") or not manifest_path.exists():
            continue
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError:
            continue
        found.append(BackupInfo(path.name, path, manifest))
    return sorted(found, key=lambda b: b.backup_id, reverse=True)


def find_backup(settings: Settings, backup_id: str | None) -> BackupInfo:
    """The backup named `backup_id`, or the newest one for None / "latest"."""
    backups = list_backups(settings)
    if not backups:
        raise BackupError(f"no backups in {settings.resolved_backup_dir} (OPTIBID_BACKUP_DIR)")
    if backup_id in (None, "latest"):
        return backups[0]
    for backup in backups:
        if backup.backup_id == backup_id:
            return backup
    raise BackupError(f"no backup {backup_id!r} in {settings.resolved_backup_dir}")


def _keys_for(settings: Settings, manifest: dict[str, Any]) -> BackupKeys:
    keys = BackupKeys.derive(_secret(settings), base64.b64decode(manifest["kdf"]["salt"]))
    if not hmac.compare_digest(manifest.get("hmac", ""), _manifest_mac(manifest, keys)):
        raise BackupError("manifest.json does not match OPTIBID_BACKUP_KEY (another key, or the manifest was altered)")
    return keys


def verify_backup(settings: Settings, path: Path) -> dict[str, Any]:
    """Check the manifest's HMAC and every part's ciphertext and plaintext checksums; the manifest."""
    manifest = json.loads((path / "manifest.json").read_text())
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{path}: unknown backup format {manifest.get('format')!r}")
    keys = _keys_for(settings, manifest)
    for part, expected in manifest["parts"].items():
        file = path / f"{part}.enc"
        cipher = hashlib.sha256()
        with file.open("rb") as f:
            while block := f.read(CHUNK):
                cipher.update(block)
        if cipher.hexdigest() != expected["cipher_sha256"]:
            raise BackupError(f"{file.name}: checksum mismatch (the file was altered or damaged)")
        plain, size = hashlib.sha256(), 0
        for chunk in decrypt_chunks(file, keys, part):
            plain.update(chunk)
            size += len(chunk)
        if plain.hexdigest() != expected["plain_sha256"] or size != expected["plain_bytes"]:
            raise BackupError(f"{file.name}: decrypted content does not match its checksum")
    return manifest


def prune_backups(settings: Settings, keep: int | None = None) -> list[str]:
    """Delete all but the `keep` newest backups (default `OPTIBID_BACKUP_KEEP`); the ids deleted."""
    keep = settings.backup_keep if keep is None else keep
    doomed = list_backups(settings)[keep:]
    for backup in doomed:
        shutil.rmtree(backup.path)
    return [b.backup_id for b in doomed]


def newest_backup_age_hours(settings: Settings, now: datetime | None = None) -> float | None:
    """Hours since the newest published backup was taken; None when there is none."""
    backups = list_backups(settings)
    if not backups:
        return None
    return ((now or datetime.now(UTC)) - backups[0].created_at).total_seconds() / 3600


# --- restore ---------------------------------------------------------------------------------------------------


def _database_is_empty(database_url: str) -> bool:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            """SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind IN ('r', 'p', 'v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                 AND n.nspname NOT LIKE 'pg_toast%'"""
        ).fetchone()
    return row is not None and row[0] == 0


def _platform_roles() -> set[str]:
    from infra import db

    return {m.lower() for path in db.migration_files() for m in re.findall(r"CREATE ROLE (\w+)", path.read_text())}


_ROLES_NAMED_BY_THE_DATABASE = """
WITH named AS (
    SELECT relowner AS oid FROM pg_class
    UNION SELECT (aclexplode(relacl)).grantee FROM pg_class WHERE relacl IS NOT NULL
    UNION SELECT nspowner FROM pg_namespace
    UNION SELECT (aclexplode(nspacl)).grantee FROM pg_namespace WHERE nspacl IS NOT NULL
    UNION SELECT unnest(polroles) FROM pg_policy
    UNION SELECT proowner FROM pg_proc
    UNION SELECT (aclexplode(proacl)).grantee FROM pg_proc WHERE proacl IS NOT NULL
    UNION SELECT typowner FROM pg_type
    UNION SELECT defaclrole FROM pg_default_acl
    UNION SELECT (aclexplode(defaclacl)).grantee FROM pg_default_acl
    UNION SELECT (aclexplode(datacl)).grantee FROM pg_database WHERE datname = current_database() AND datacl IS NOT NULL
), wanted AS (
    SELECT oid FROM named
    UNION SELECT member FROM pg_auth_members WHERE roleid IN (SELECT oid FROM named)
)
SELECT r.rolname, r.rolcanlogin, r.rolinherit, coalesce(r.rolconfig, '{}'),
       ARRAY(SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
             WHERE m.member = r.oid AND NOT g.rolsuper ORDER BY 1)
FROM pg_roles r
WHERE r.oid IN (SELECT oid FROM wanted) AND NOT r.rolsuper AND r.rolname !~ '^pg_'
ORDER BY r.rolname
"""


def database_roles(database_url: str) -> list[dict[str, Any]]:
    """The roles the database's owners, grants and policies name (and their members), with what pg_dump leaves
    out because roles are cluster-wide: login, inherit, role-wide settings and memberships. A restore into a
    fresh server creates them first: pg_restore stops at the first grant to a role that does not exist (the
    BI roles `ensure_bi_roles` creates, for one). Passwords are not kept: set them again after a restore."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(_ROLES_NAMED_BY_THE_DATABASE).fetchall()
    return [
        {"name": name, "login": login, "inherit": inherit, "settings": list(settings), "member_of": list(groups)}
        for name, login, inherit, settings, groups in rows
    ]


def _create_roles(database_url: str, roles: list[dict[str, Any]]) -> list[str]:
    """Create the backed-up roles the server lacks, with their settings and memberships; their names."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        present = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles")}
        created = [r for r in roles if r["name"] not in present]
        for role in created:
            ident = sql.Identifier(role["name"])
            conn.execute(
                sql.SQL("CREATE ROLE {} {} {}").format(
                    ident,
                    sql.SQL("LOGIN" if role["login"] else "NOLOGIN"),
                    sql.SQL("INHERIT" if role["inherit"] else "NOINHERIT"),
                )
            )
            for setting in role["settings"]:
                key, value = setting.split("=", 1)
                name = sql.SQL(".").join(sql.Identifier(part) for part in key.split("."))
                conn.execute(sql.SQL("ALTER ROLE {} SET {} = {}").format(ident, name, sql.Literal(value)))
        present |= {r["name"] for r in created}
        for role in created:
            for group in role["member_of"]:
                if group in present:
                    grant = sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(role["name"]))
                    conn.execute(grant)
    return [r["name"] for r in created]


def _ensure_roles(database_url: str) -> None:
    """Create the platform's cluster-wide roles the dump's grants name (when missing), by migrating a scratch
    database: the migrations are what creates them, with their memberships."""
    from infra import db

    with psycopg.connect(database_url) as conn:
        present = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles")}
    if _platform_roles() <= present:
        return
    scratch = f"optibid_restore_roles_{os.getpid()}"
    url = db.create_database(database_url, scratch, drop_existing=True)
    try:
        db.migrate(url)
    finally:
        db.drop_database(database_url, scratch)


def _safe_members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    for member in tar:
        if member.name.startswith("/") or ".." in Path(member.name).parts or not (member.isfile() or member.isdir()):
            raise BackupError(f"unsafe path in backup archive: {member.name}")
        yield member


@dataclass(frozen=True)
class RestoreReport:
    backup_id: str
    seconds: float
    lake_versions: dict[str, int]
    migrations_applied: list[str]


def restore_backup(settings: Settings, backup_id: str | None, database_url: str, lake: Lake) -> RestoreReport:
    """Restore a verified backup into an empty database, home and lake (refusing to overwrite anything)."""
    from infra import db

    started = time.perf_counter()
    backup = find_backup(settings, backup_id)
    manifest = verify_backup(settings, backup.path)
    keys = _keys_for(settings, manifest)
    store = _LakeStore.of(lake)
    store.refuse_restore_into(lake)
    existing = [
        p for p in manifest["home_parts"] if (settings.home_dir / p).exists() and any((settings.home_dir / p).iterdir())
    ]
    if existing and existing != ["dagster_home"]:
        raise BackupError(
            f"the home {settings.home_dir} already holds {', '.join(existing)}: restore into a fresh home"
        )
    if not _database_is_empty(database_url):
        raise BackupError("the target database is not empty: restore into a new database (createdb) or a fresh home")

    _ensure_roles(database_url)
    _create_roles(database_url, manifest["postgres"].get("roles", []))
    pg_restore, _ = postgres_tool(
        "pg_restore", max(manifest["postgres"]["dump_tool_major"], server_major(database_url))
    )
    conninfo, env = libpq_env(database_url)
    with subprocess.Popen(
        [str(pg_restore), "--exit-on-error", "--single-transaction", "--dbname", conninfo],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    ) as proc:
        assert proc.stdin is not None
        try:
            for chunk in decrypt_chunks(backup.path / f"{DUMP_PART}.enc", keys, DUMP_PART):
                proc.stdin.write(chunk)
        except BrokenPipeError:
            pass
        proc.stdin.close()
        error = proc.stderr.read().decode() if proc.stderr else ""
        if proc.wait() != 0:
            raise BackupError(f"pg_restore failed: {error.strip()}")
    applied = db.migrate(database_url)

    settings.home_dir.mkdir(parents=True, exist_ok=True)
    reader = io.BufferedReader(_DecryptingReader(decrypt_chunks(backup.path / f"{HOME_PART}.enc", keys, HOME_PART)))
    with tarfile.open(fileobj=reader, mode="r|gz") as tar:
        for member in _safe_members(tar):
            tar.extract(member, settings.home_dir, filter="data")
    reader = io.BufferedReader(_DecryptingReader(decrypt_chunks(backup.path / f"{LAKE_PART}.enc", keys, LAKE_PART)))
    with tarfile.open(fileobj=reader, mode="r|") as tar:
        for member in _safe_members(tar):
            source = tar.extractfile(member) if member.isfile() else None
            if source is not None:
                store.write(member.name, source)
    restored = _check_restored(lake, manifest["lake"]["versions"])
    return RestoreReport(backup.backup_id, round(time.perf_counter() - started, 3), restored, applied)


# --- freshness ----------------------------------------------------------------------------------------------

BACKUP_FRESHNESS_ALERT = "backup:freshness"


def check_backup_freshness(conn: psycopg.Connection, settings: Settings, now: datetime | None = None) -> str:
    """Open (or keep open) the backup-freshness alert in `ops.alerts` when backups are configured and the newest
    one is older than `OPTIBID_BACKUP_MAX_AGE_HOURS` (or there is none); resolve it once a fresh one exists.
    What was found, in one line."""
    from infra import alerts

    if settings.backup_key is None:
        alerts.resolve_alert(conn, BACKUP_FRESHNESS_ALERT, {"reason": "backups are not configured"})
        return "backups not configured (OPTIBID_BACKUP_KEY unset)"
    age = newest_backup_age_hours(settings, now)
    limit = settings.backup_max_age_hours
    if age is not None and age <= limit:
        alerts.resolve_alert(conn, BACKUP_FRESHNESS_ALERT, {"newest_backup_age_hours": round(age, 2)})
        return f"newest backup {age:.1f} h old (limit {limit:g} h)"
    title = (
        f"no backup in {settings.resolved_backup_dir}"
        if age is None
        else f"newest backup is {age:.1f} h old (limit {limit:g} h)"
    )
    alerts.raise_alert(
        conn,
        kind="freshness",
        dedup_key=BACKUP_FRESHNESS_ALERT,
        title=title,
        severity="error",
        detail={"newest_backup_age_hours": None if age is None else round(age, 2), "limit_hours": limit},
        asset_key="ops/backup",
    )
    return title
