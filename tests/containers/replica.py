"""Talking to a running replica from the host: gRPC (health, Head, PutEntries,
MissingIds, ScanSince, PeerStatus) through stubs compiled from proto/, over TLS
when the replicas serve it, each request signed with a client key when client
authentication is required (`sign`, `Signer`), and /metrics.

`Writer` writes entries in the background to a changing set of replicas and
keeps every acknowledged entry, so a scenario can ask each replica afterwards
whether it holds all of them.
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import blake3
import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2, health_pb2_grpc

store_pb2 = store_pb2_grpc = replication_pb2 = replication_pb2_grpc = None

# Quick reconnects: replicas restart under the same published port.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


def compile_protos(proto_dir: Path, out_dir: Path) -> None:
    """Python stubs for proto/mindoo/replica/v1/*.proto, importable from out_dir."""
    global store_pb2, store_pb2_grpc, replication_pb2, replication_pb2_grpc
    out_dir.mkdir(parents=True, exist_ok=True)
    protos = sorted(str(p.relative_to(proto_dir)) for p in proto_dir.rglob("*.proto"))
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_dir}", f"--python_out={out_dir}",
                    f"--grpc_python_out={out_dir}", *protos], check=True)
    sys.path.insert(0, str(out_dir))
    from mindoo.replica.v1 import replication_pb2 as rpb, replication_pb2_grpc as rpb_grpc
    from mindoo.replica.v1 import store_pb2 as pb, store_pb2_grpc as pb_grpc
    store_pb2, store_pb2_grpc = pb, pb_grpc
    replication_pb2, replication_pb2_grpc = rpb, rpb_grpc


@dataclasses.dataclass(frozen=True)
class Tls:
    """How a client reaches a replica whose gRPC port takes TLS only: the mesh
    CA its certificate must chain to, the name it must be valid for, and
    optionally a certificate to present (an operator's, for PeerStatus).
    Replicas are dialed at published ports of 127.0.0.1, so the name checked
    is set apart from the address: the pod's DNS name, as a client in the
    cluster would dial it."""

    ca: bytes
    server_name: str
    cert: bytes | None = None
    key: bytes | None = None

    def presenting(self, cert: bytes, key: bytes) -> Tls:
        return dataclasses.replace(self, cert=cert, key=key)


# --- client authentication ------------------------------------------------------
# A client proves it holds an ed25519 key on every request: the metadata
# header x-mindoo-auth is v1.<public key hex>.<unix ms>.<nonce hex>.<signature
# hex>, the signature over CONTEXT + ms (8 bytes, big-endian) + the 16 nonce
# bytes. A replica takes it once, within its allowed clock skew (30 s).

AUTH_HEADER = "x-mindoo-auth"
AUTH_CONTEXT = b"mindoo-replica auth v1\n"


def public_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def secret_hex(key: Ed25519PrivateKey) -> str:
    """The secret key (its 32-byte seed) as 64 hex digits: what
    MINDOO_REPLICA_CLIENT_KEY_FILE holds."""
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption()).hex()


def sign(key: Ed25519PrivateKey, at_ms: int | None = None, nonce: bytes | None = None) -> str:
    """The x-mindoo-auth value for one request: now and a fresh random nonce
    unless given (a stale or reused header, on purpose)."""
    at_ms = int(time.time() * 1000) if at_ms is None else at_ms
    nonce = os.urandom(16) if nonce is None else nonce
    signature = key.sign(AUTH_CONTEXT + struct.pack(">Q", at_ms) + nonce)
    return f"v1.{public_hex(key)}.{at_ms}.{nonce.hex()}.{signature.hex()}"


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, details, metadata):
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = details.wait_for_ready
        self.compression = getattr(details, "compression", None)


class Signer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
             grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Signs every call made through the channel with `key`: a new
    x-mindoo-auth header (new time, new nonce) per call."""

    def __init__(self, key: Ed25519PrivateKey):
        self.key = key

    def _signed(self, details):
        metadata = [(k, v) for k, v in (details.metadata or []) if k != AUTH_HEADER]
        return _CallDetails(details, metadata + [(AUTH_HEADER, sign(self.key))])

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._signed(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._signed(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._signed(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._signed(details), request_iterator)


def open_channel(addr: str, tls: Tls | None, options=(), key: Ed25519PrivateKey | None = None) -> grpc.Channel:
    """A channel to host:port: plaintext without `tls`, else TLS checked
    against tls.ca and tls.server_name, presenting tls.cert when given; every
    call signed with `key` when given."""
    if tls is None:
        channel = grpc.insecure_channel(addr, options=list(options))
    else:
        creds = grpc.ssl_channel_credentials(root_certificates=tls.ca, private_key=tls.key,
                                             certificate_chain=tls.cert)
        channel = grpc.secure_channel(addr, creds,
                                      options=[*options, ("grpc.ssl_target_name_override", tls.server_name)])
    return grpc.intercept_channel(channel, Signer(key)) if key is not None else channel


# A new connection for each call of the one-off helpers below: gRPC would
# otherwise reuse a connection another channel holds to the same address.
FRESH = [("grpc.use_local_subchannel_pool", 1)]


def head_once(addr: str, tls: Tls | None, timeout: float = 3, key: Ed25519PrivateKey | None = None,
              header: str | None = None):
    """Store/Head on a new connection: signed with `key`, or carrying the
    x-mindoo-auth value `header` as given (to send one twice), or neither.
    Any valid key may call it: with a valid one it fails only if the
    connection does."""
    metadata = [(AUTH_HEADER, header)] if header is not None else None
    with open_channel(addr, tls, FRESH, key) as ch:
        return store_pb2_grpc.StoreStub(ch).Head(store_pb2.HeadRequest(), timeout=timeout, metadata=metadata)


def peer_status(addr: str, tls: Tls | None, timeout: float = 5, key: Ed25519PrivateKey | None = None):
    """Replication/PeerStatus, the admin call, on a new connection (signed
    with `key` when given)."""
    with open_channel(addr, tls, FRESH, key) as ch:
        return replication_pb2_grpc.ReplicationStub(ch).PeerStatus(replication_pb2.PeerStatusRequest(),
                                                                   timeout=timeout)


def put_once(addr: str, tls: Tls | None, entries: list[tuple[bytes, bytes]], key: Ed25519PrivateKey | None = None,
             timeout: float = 5) -> list[str]:
    """One PutEntries batch on a new connection (signed with `key` when
    given); each entry's PutStatus name."""
    req = store_pb2.PutEntriesRequest(entries=[store_pb2.Entry(id=i, data=d) for i, d in entries])
    with open_channel(addr, tls, FRESH, key) as ch:
        resp = next(store_pb2_grpc.StoreStub(ch).PutEntries(iter([req]), timeout=timeout))
        return [store_pb2.PutStatus.Name(s) for s in resp.status]


def missing_once(addr: str, tls: Tls | None, namespace: tuple[str, str], ids: list[bytes],
                 key: Ed25519PrivateKey | None = None, timeout: float = 5) -> list[bytes]:
    """MissingIds for `ids` in `namespace` (tenant, db) on a new connection."""
    req = store_pb2.MissingIdsRequest(namespace=store_pb2.Namespace(tenant=namespace[0], db=namespace[1]), ids=ids)
    with open_channel(addr, tls, FRESH, key) as ch:
        return list(store_pb2_grpc.StoreStub(ch).MissingIds(req, timeout=timeout).missing)


def scan_once(addr: str, tls: Tls | None, namespaces: list[tuple[str, str]], key: Ed25519PrivateKey | None = None,
              timeout: float = 5) -> int:
    """ScanSince from the start of the log, at most 10 records, of
    `namespaces` (empty: every namespace); the number of records."""
    req = store_pb2.ScanSinceRequest(limit=10, namespaces=[store_pb2.Namespace(tenant=t, db=d) for t, d in namespaces])
    with open_channel(addr, tls, FRESH, key) as ch:
        return sum(len(batch.records) for batch in store_pb2_grpc.StoreStub(ch).ScanSince(req, timeout=timeout))


NAMESPACE = ("containers", "mesh")  # tenant, db of every entry written here
# The author of every entry written here: replicas take only entries signed
# by the author their envelope names (policy.require_signatures, the default).
SIGNER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
AUTHOR = SIGNER.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def make_entry(size: int, namespace: tuple[str, str] = NAMESPACE) -> tuple[bytes, bytes]:
    """A new entry in the canonical encoding (store.proto): (id, data).
    Signed by AUTHOR, random ciphertext of `size` bytes."""

    def short(b: bytes) -> bytes:
        return bytes([len(b)]) + b

    tenant, db = (s.encode() for s in namespace)
    ciphertext = os.urandom(size)
    body = (b"MDE\x01" + short(tenant) + short(db) + AUTHOR + struct.pack(">Q", int(time.time() * 1000))
            + short(b"doc_change") + short(os.urandom(16)) + struct.pack(">H", 0)
            + struct.pack(">I", len(ciphertext)) + ciphertext)
    entry_id = blake3.blake3(body).digest()
    return entry_id, body + bytes([64]) + SIGNER.sign(entry_id)


class Replica:
    """A gRPC client of one replica at host:port, signing every call with
    `key` when given. A call that times out or finds the replica unavailable
    drops the connection, so the next call connects anew: a replica that got
    a new address behind the same published port (restarted, or reconnected
    to its network) leaves the old connection dead, and nothing else would
    notice."""

    def __init__(self, addr: str, tls: Tls | None = None, key: Ed25519PrivateKey | None = None):
        self.addr = addr
        self.tls = tls
        self.key = key
        self._connect()

    def _connect(self) -> None:
        self.channel = open_channel(self.addr, self.tls, CHANNEL_OPTIONS, self.key)
        self.store = store_pb2_grpc.StoreStub(self.channel)

    def _call(self, fn):
        try:
            return fn()
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                self.reset()
            raise

    def reset(self) -> None:
        """Drops the connection: the next call connects anew."""
        self.channel.close()
        self._connect()

    def close(self) -> None:
        self.channel.close()

    def head(self, timeout: float = 5):
        return self._call(lambda: self.store.Head(store_pb2.HeadRequest(), timeout=timeout))

    def put(self, entries: list[tuple[bytes, bytes]], timeout: float = 10) -> list[str]:
        """Writes one batch; each entry's PutStatus name."""
        req = store_pb2.PutEntriesRequest(entries=[store_pb2.Entry(id=i, data=d) for i, d in entries])
        resp = self._call(lambda: next(self.store.PutEntries(iter([req]), timeout=timeout)))
        return [store_pb2.PutStatus.Name(s) for s in resp.status]

    def missing(self, ids: list[bytes], timeout: float = 30) -> list[bytes]:
        """The ids of `ids` this replica does not hold."""
        limit = max(1, min(self.head().max_ids_per_request or 1000, 5000))
        ns = store_pb2.Namespace(tenant=NAMESPACE[0], db=NAMESPACE[1])
        out = []
        for i in range(0, len(ids), limit):
            req = store_pb2.MissingIdsRequest(namespace=ns, ids=ids[i:i + limit])
            resp = self._call(lambda: self.store.MissingIds(req, timeout=timeout))
            out += list(resp.missing)
        return out


def health(addr: str, service: str, timeout: float = 1.0) -> str:
    """SERVING / NOT_SERVING / ..., or UNREACHABLE; a new connection each time,
    as the kubelet's gRPC probe makes. (Without a local subchannel pool, gRPC
    would reuse any connection to the same address another channel holds.)"""
    with grpc.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service),
                                                        timeout=timeout)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        except grpc.RpcError as e:
            return "UNREACHABLE" if e.code() in (grpc.StatusCode.UNAVAILABLE,
                                                  grpc.StatusCode.DEADLINE_EXCEEDED) else e.code().name


class HealthClient:
    """grpc.health.v1 on one connection kept open (over TLS with `tls`)."""

    def __init__(self, addr: str, tls: Tls | None = None):
        self.channel = open_channel(addr, tls, FRESH)
        self.stub = health_pb2_grpc.HealthStub(self.channel)

    def check(self, service: str, timeout: float = 1.0) -> str:
        try:
            resp = self.stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        except grpc.RpcError as e:
            return "UNREACHABLE" if e.code() in (grpc.StatusCode.UNAVAILABLE,
                                                  grpc.StatusCode.DEADLINE_EXCEEDED) else e.code().name

    def close(self) -> None:
        self.channel.close()


# --- metrics -----------------------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclasses.dataclass
class Metrics:
    samples: list[tuple[str, dict[str, str], float]]

    def get(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        return [(lab, v) for n, lab, v in self.samples
                if n == name and all(lab.get(k) == want for k, want in labels.items())]

    def total(self, name: str, **labels: str) -> float:
        return sum(v for _, v in self.get(name, **labels))

    def by(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for lab, v in self.get(name):
            out[lab.get(label, "")] = out.get(lab.get(label, ""), 0) + v
        return out


def parse_metrics(text: str) -> Metrics:
    samples = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = _SAMPLE.match(line)
        if m:
            samples.append((m.group(1), dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return Metrics(samples)


def scrape(addr: str, timeout: float = 3) -> Metrics:
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=timeout) as resp:
        return parse_metrics(resp.read().decode())


def scrape_in_netns(pid: int, port: int, timeout: float = 3) -> Metrics:
    """/metrics on the container's own loopback, from inside its network
    namespace: works while the container is cut off from its network."""
    code = ("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
            f"'http://127.0.0.1:{port}/metrics', timeout={timeout}).read().decode())")
    proc = subprocess.run(["nsenter", "-t", str(pid), "-n", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=timeout + 5)
    if proc.returncode != 0:
        raise RuntimeError(f"metrics inside the netns of pid {pid}: {proc.stderr.strip()}")
    return parse_metrics(proc.stdout)


# --- the background writer -----------------------------------------------------

@dataclasses.dataclass
class Acked:
    id: bytes
    size: int  # bytes of Entry.data
    replica: int  # the ordinal it was written to
    at: float  # time.monotonic() of the acknowledgement


class Writer(threading.Thread):
    """Writes batches of new entries round-robin to the replicas in `targets`
    (ordinals) at about `rate` entries a second; keeps every acknowledged
    entry (STORED or DUPLICATE) and counts failed batches per replica."""

    def __init__(self, clients: dict[int, Replica], rate: float = 100, batch: int = 5, size: int = 1024):
        super().__init__(daemon=True)
        self.clients = clients
        self.rate, self.batch, self.size = rate, batch, size
        self.acked: list[Acked] = []
        self.failed: Counter = Counter()
        self.last_error: dict[int, str] = {}
        self._targets: list[int] = []
        self._lock = threading.Lock()
        self._in_batch = threading.Lock()
        self._running = threading.Event()
        self._closing = threading.Event()
        self.start()

    def write_to(self, targets) -> None:
        """Writes go to these ordinals from the next batch on; empty pauses."""
        with self._lock:
            self._targets = sorted(targets)
        (self._running.set if self._targets else self._running.clear)()

    def pause(self) -> None:
        """No more writes; returns once a batch under way is acknowledged."""
        self.write_to([])
        with self._in_batch:
            pass

    def close(self) -> None:
        self._closing.set()
        self._running.set()
        self.join()

    def acked_since(self, t: float, exclude: int | None = None) -> list[Acked]:
        with self._lock:
            return [a for a in self.acked if a.at >= t and a.replica != exclude]

    def ids(self) -> list[bytes]:
        with self._lock:
            return [a.id for a in self.acked]

    def run(self) -> None:
        turn = 0
        interval = self.batch / self.rate
        while not self._closing.is_set():
            self._running.wait()
            with self._lock:
                targets = list(self._targets)
            if self._closing.is_set() or not targets:
                continue
            target = targets[turn % len(targets)]
            turn += 1
            started = time.monotonic()
            with self._in_batch:
                if self._running.is_set():
                    self._write(target)
            time.sleep(max(0.0, interval - (time.monotonic() - started)))

    def _write(self, target: int) -> None:
        entries = [make_entry(self.size) for _ in range(self.batch)]
        try:
            statuses = self.clients[target].put(entries, timeout=5)
            now = time.monotonic()
            with self._lock:
                for (eid, data), status in zip(entries, statuses):
                    if status in ("PUT_STATUS_STORED", "PUT_STATUS_DUPLICATE"):
                        self.acked.append(Acked(eid, len(data), target, now))
                    else:
                        self.failed[target] += 1
                        self.last_error[target] = status
        except grpc.RpcError as e:
            self.failed[target] += 1
            self.last_error[target] = f"{e.code().name}: {e.details()}"
