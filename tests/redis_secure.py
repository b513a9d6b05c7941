"""A private redis-server that asks for credentials: ACL users from a file,
and optionally a TLS listener with a test CA made by ``openssl``.

``quantum_daemon_dev.redis_server`` starts an open server; these tests need
one that refuses strangers, so they start their own (free port, temporary
directory) and wait for it with a real, authenticated client.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from quantum_daemon_dev.redis_server import find_redis_server, free_port, stop_process

REPO = Path(__file__).resolve().parents[1]
ACL_RULE_FILE = REPO / "systemd" / "redis-acl.conf"
ADMIN_PASSWORD = "admin-Pw-4c1e"  # the default user's, for the tests' own client


def daemon_acl_rule() -> str:
    """The ``user ...`` line of the shipped rule (comments dropped)."""
    lines = [ln for ln in ACL_RULE_FILE.read_text().splitlines() if ln.startswith("user ")]
    assert len(lines) == 1, f"{ACL_RULE_FILE}: expected one user line"
    return lines[0]


def without(rule: str, *tokens: str) -> str:
    """The rule with some of its permission tokens removed."""
    words = rule.split()
    for token in tokens:
        assert token in words, f"{token} is not in the rule"
        words.remove(token)
    return " ".join(words)


@dataclass(frozen=True)
class CertAuthority:
    """A CA and a server certificate it signed for 127.0.0.1 and localhost."""

    ca: Path
    cert: Path
    key: Path


def make_cert_authority(directory: Path, name: str = "ca") -> CertAuthority:
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN=qd-test-{name}",
    )  # fmt: skip
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
        "-out", "server.csr", "-subj", "/CN=127.0.0.1",
    )  # fmt: skip
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", f"{name}.crt", "-CAkey", f"{name}.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.cnf",
    )  # fmt: skip
    return CertAuthority(
        directory / f"{name}.crt", directory / "server.crt", directory / "server.key"
    )


@dataclass
class SecureRedis:
    """redis-server with an ACL file: the default user needs ``ADMIN_PASSWORD``;
    ``users`` are more ``user ...`` lines (each with its password rule)."""

    users: tuple[str, ...] = ()
    tls: CertAuthority | None = None
    port: int = field(default_factory=free_port)
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="qd-redis-")))
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def url_for(self, user: str, password: str) -> str:
        """The URL of ``user``, its password in the query (``?password=``)."""
        return f"{self.url.replace('://', f'://{user}@')}?password={password}"

    def admin(self) -> redis.Redis:
        options = {"ssl_ca_certs": str(self.tls.ca)} if self.tls else {}
        return redis.Redis.from_url(self.url, password=ADMIN_PASSWORD, socket_timeout=5, **options)

    def start(self, timeout: float = 15.0) -> SecureRedis:
        acl = self.directory / "users.acl"
        acl.write_text("\n".join([f"user default on >{ADMIN_PASSWORD} ~* &* +@all", *self.users]))
        args = [find_redis_server(), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        args += ["--save", "", "--appendonly", "no", "--aclfile", str(acl)]
        args += ["--logfile", str(self.directory / "redis.log")]
        if self.tls:
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            args += ["--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key)]
            args += ["--tls-ca-cert-file", str(self.tls.ca)]
        else:
            args += ["--port", str(self.port)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = self.admin()
        try:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server exited at start:\n{log}")
                with contextlib.suppress(redis.ConnectionError):
                    if client.ping():
                        return
                time.sleep(0.05)
            raise RuntimeError(f"redis-server did not answer on port {self.port}")
        finally:
            client.close()

    def cleanup(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def secure_redis(
    users: tuple[str, ...] = (), tls: CertAuthority | None = None
) -> Iterator[SecureRedis]:
    server = SecureRedis(users=users, tls=tls).start()
    try:
        yield server
    finally:
        server.cleanup()
