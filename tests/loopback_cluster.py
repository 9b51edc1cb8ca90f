"""Test helper: a real multi-node Ray cluster plus an S3-compatible store on this machine.

Why: a single local ``ray.init()`` hides what a cloud cluster exposes: tasks on another
node, a job's ``working_dir`` shipped by ``ray job submit``, storage every node must share,
and token authentication between nodes. This starts the same pieces with ``ray start``
and ``moto_server`` and tears down exactly what it started, without touching any other Ray
on the machine (no ``ray stop``, which kills every Ray of the user).

    with LoopbackCluster(log_dir=tmp_path) as cluster:
        result = cluster.submit(["python", "job.py"], working_dir=src)
        assert result.status == "SUCCEEDED", result.logs
        uri = cluster.s3_uri("poster-ray", "runs")

Notes (Ray 2.60, Linux):
- Ray rewrites ``--node-ip-address=127.0.0.1`` to the machine's outward IP, so every node
  would share that address. Other loopback addresses (127.0.0.2, 127.0.0.3, ...) are kept:
  each node gets its own, and ``ray.get_runtime_context().get_node_id()`` tells them apart.
- ``ray start`` turns token auth on only with ``RAY_AUTH_MODE=token`` (or an existing
  token); a node started without it cannot join a token cluster. The token lives in this
  cluster's own directory (``RAY_AUTH_TOKEN_PATH``), never in ``~/.ray``.
- GCS, raylet, metrics and agent gRPC ports still bind every interface; all ports come from
  one claimed block of 256 below the kernel's ephemeral range, so neither Ray's defaults
  (6379, 8265, 10001, 52365, 44217, 44227, workers 10002-19999) nor random ports collide.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

# abspath, not resolve(): the venv's python is a symlink to the base interpreter.
BIN_DIR = Path(os.path.abspath(sys.executable)).parent
MARKER_VAR = "LOOPBACK_CLUSTER_ID"
TERMINAL_JOB_STATES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})

_BLOCK_SIZE = 256  # ports reserved per cluster
_SHARED_PORTS = 16  # gcs, dashboard, client server, autoscaler/dashboard metrics, moto
_NODE_PORTS = 8  # object manager, node manager, agent http/grpc, runtime env agent, metrics
_WORKER_PORTS = 48  # per node: one per worker or driver process
_MAX_NODES = (_BLOCK_SIZE - _SHARED_PORTS) // (_NODE_PORTS + _WORKER_PORTS)
_START_ATTEMPTS = 3  # per `ray start`, when the raylet timed out registering
_PORT_FLOOR = 20000  # above Ray's default worker ports (10002-19999)

# Inherited settings that would point the cluster or its clients somewhere else.
_DROPPED_ENV_PREFIXES = ("RAY_", "AWS_")


@dataclass(frozen=True)
class ProcessRecord:
    """A process this cluster started; start_ticks tells a reused PID apart."""

    pid: int
    start_ticks: int
    name: str
    cmdline: str

    def alive(self) -> bool:
        """True while this very process (not a later one with its PID) runs."""
        stat = _read_stat(self.pid)
        return stat is not None and stat.start_ticks == self.start_ticks and stat.state != "Z"


@dataclass(frozen=True)
class JobResult:
    """Outcome of one ``ray job submit``: the job server's status and the driver's logs."""

    submission_id: str
    status: str
    message: str | None
    logs: str
    cli_returncode: int
    cli_output: str
    command: list[str]


@dataclass(frozen=True)
class _Stat:
    pid: int
    state: str
    ppid: int
    session: int
    start_ticks: int
    name: str


def _read_stat(pid: int) -> _Stat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The name is in parentheses and may itself contain spaces or parentheses.
    name = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    return _Stat(pid, fields[0], int(fields[1]), int(fields[3]), int(fields[19]), name)


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _ephemeral_port_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _port_is_free(port: int) -> bool:
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError as e:
                if family == socket.AF_INET6 and e.errno == 97:  # no IPv6 on this host
                    continue
                return False
    return True


class _PortBlock:
    """A block of ports that nothing listens on and no other LoopbackCluster holds.

    The claim is an abstract unix socket named after the block: the kernel drops it when
    this process closes it or dies, so a crashed test leaves no stale lock behind.
    """

    def __init__(self) -> None:
        bases = list(range(_PORT_FLOOR, _ephemeral_port_floor() - _BLOCK_SIZE, _BLOCK_SIZE))
        random.shuffle(bases)
        for base in bases:
            claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                claim.bind(f"\0loopback-cluster-ports-{base}")
            except OSError:
                claim.close()
                continue
            if all(_port_is_free(p) for p in range(base, base + _BLOCK_SIZE)):
                self.base, self._claim, self._next = base, claim, base
                return
            claim.close()
        raise RuntimeError("no free block of ports between 20000 and the ephemeral range")

    def take(self, n: int = 1) -> int:
        """The first of n consecutive ports."""
        port = self._next
        self._next += n
        assert self._next <= self.base + _BLOCK_SIZE, "port block exhausted"
        return port

    def release(self) -> None:
        self._claim.close()


class LoopbackCluster:
    """A head node, ``worker_nodes`` more nodes and (optionally) moto's S3 on this machine.

    Each node has ``num_cpus`` CPUs and a custom resource ``node_a``, ``node_b``, ... of 1
    so a task can be pinned to a node. ``env`` is what every process of the cluster and
    the job client get: token auth settings and the S3 endpoint and dummy credentials.
    Inherited ``RAY_*`` and ``AWS_*`` variables are dropped (they could point at another
    cluster or real AWS); pass ``env=`` to add variables.
    """

    # Set by start().
    env: dict[str, str]
    token: str
    token_path: Path
    gcs_port: int
    dashboard_port: int
    client_server_port: int
    s3_port: int

    def __init__(
        self,
        log_dir: Path | None = None,
        *,
        worker_nodes: int = 1,
        num_cpus: int = 1,
        node_ips: Sequence[str] | None = None,
        buckets: Sequence[str] = ("poster-ray",),
        object_store_mb: int = 256,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 90.0,
    ) -> None:
        if not Path("/proc/self/stat").exists():
            raise RuntimeError("LoopbackCluster needs Linux (/proc)")
        n_nodes = worker_nodes + 1
        if n_nodes > _MAX_NODES:
            raise ValueError(f"at most {_MAX_NODES - 1} worker nodes")
        self.node_ips = list(node_ips or [f"127.0.0.{i + 2}" for i in range(n_nodes)])
        if len(self.node_ips) != n_nodes or "127.0.0.1" in self.node_ips:
            raise ValueError("one node IP per node, not 127.0.0.1 (Ray rewrites it)")
        self.node_resources = [{f"node_{chr(ord('a') + i)}": 1} for i in range(n_nodes)]
        self.num_cpus = num_cpus
        self.buckets = list(buckets)
        self.object_store_bytes = object_store_mb * 1024 * 1024
        self.log_dir = log_dir
        self.start_timeout = start_timeout
        self.cluster_id = uuid.uuid4().hex
        self._extra_env = dict(env or {})
        self._records: dict[int, ProcessRecord] = {}
        self._sessions: set[int] = set()
        self._node_sessions: dict[int, int] = {}  # node index -> its `ray start` session
        self._moto: subprocess.Popen[bytes] | None = None
        self._ports: _PortBlock | None = None
        self.root: Path | None = None
        self.leftovers: list[ProcessRecord] = []

    # ----------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> LoopbackCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        leftovers = self.close()
        if leftovers and exc_type is None:
            raise RuntimeError(f"processes survived teardown: {leftovers}")

    def start(self) -> None:
        """Start moto (if buckets), the head and the worker nodes; wait until all are up."""
        # Short path: Ray's unix sockets live under it and must stay below 108 characters.
        self.root = Path(
            tempfile.mkdtemp(prefix="lbc-", dir="/tmp" if Path("/tmp").is_dir() else None)
        )
        (self.root / "logs").mkdir()
        (self.root / "tmp").mkdir()
        self.token_path = self.root / "auth_token"
        self.token = secrets.token_hex(32)
        self.token_path.write_text(self.token)
        self.token_path.chmod(0o600)

        ports = self._ports = _PortBlock()
        self.gcs_port = ports.take()
        self.dashboard_port = ports.take()
        self.client_server_port = ports.take()
        autoscaler_metric_port = ports.take()
        dashboard_metric_port = ports.take()
        self.s3_port = ports.take()
        ports.take(_SHARED_PORTS - 6)
        # Ports for every node the block allows: a replacement node (add_node) needs its own.
        self._node_ports = [ports.take(_NODE_PORTS) for _ in range(_MAX_NODES)]
        self._worker_ports = [ports.take(_WORKER_PORTS) for _ in range(_MAX_NODES)]

        self.env = self._build_env(autoscaler_metric_port, dashboard_metric_port)
        if self.buckets:
            self._start_moto()
        for i in range(len(self.node_ips)):
            self._start_node(i)
        self._wait_for_nodes(self.node_ips)
        self.scan()

    def close(self) -> list[ProcessRecord]:
        """Stop what this cluster started, in ``ray stop``'s order: raylets, the rest, GCS.

        Returns the processes still alive afterwards (normally none) and removes the
        cluster's directory, after copying its logs to ``log_dir`` when given.
        """
        if self.root is None:
            return []
        self.scan()
        self._terminate(lambda r: r.name == "raylet", reverse=True)
        self._terminate(lambda r: r.name != "gcs_server")
        self._terminate(lambda r: True)
        if self._moto is not None:
            self._moto.terminate()
            try:
                self._moto.wait(10)
            except subprocess.TimeoutExpired:
                self._moto.kill()
                self._moto.wait(10)
        for _ in range(5):  # late children (a worker started while its raylet stopped)
            if not self._terminate(lambda r: True, grace=1.0):
                break
        self.leftovers = [r for r in self._records.values() if r.alive()]
        if self.log_dir is not None:
            self._keep_logs(Path(self.log_dir))
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None
        if self._ports is not None:
            self._ports.release()
            self._ports = None
        return self.leftovers

    # -------------------------------------------------------------------------- public API

    @property
    def address(self) -> str:
        """The GCS address (``ray start --address`` / ``ray.init(address=...)``)."""
        return f"{self.node_ips[0]}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """The dashboard and job server, bound to 127.0.0.1 only."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def processes(self) -> list[ProcessRecord]:
        """Every process seen belonging to this cluster so far (see ``scan``)."""
        return list(self._records.values())

    def s3_uri(self, bucket: str, *parts: str) -> str:
        """``s3://bucket/part/...``; in the cluster it resolves to the local S3 server."""
        key = "/".join(p.strip("/") for p in parts if p)
        return f"s3://{bucket}/{key}" if key else f"s3://{bucket}"

    def s3_client(self) -> Any:
        """A boto3 S3 client for the local server (for the test process itself)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def submit(
        self,
        entrypoint: str | Sequence[str],
        *,
        working_dir: Path | str | None = None,
        runtime_env: Mapping[str, Any] | None = None,
        submission_id: str | None = None,
        entrypoint_num_cpus: float | None = None,
        entrypoint_resources: Mapping[str, float] | None = None,
        timeout: float = 300.0,
    ) -> JobResult:
        """Run ``ray job submit`` (which waits for the job) and return status and logs.

        ``entrypoint`` is an argv list (a string is split with shlex); the CLI quotes it for
        the shell the job server runs it in. On timeout the job is stopped and TimeoutError
        raised with its logs.
        """
        argv = shlex.split(entrypoint) if isinstance(entrypoint, str) else list(entrypoint)
        sid = submission_id or f"lbc-{uuid.uuid4().hex[:12]}"
        cmd = [str(BIN_DIR / "ray"), "job", "submit", "--address", self.dashboard_url]
        cmd += ["--submission-id", sid]
        if working_dir is not None:
            cmd += ["--working-dir", str(working_dir)]
        if runtime_env is not None:
            cmd += ["--runtime-env-json", json.dumps(dict(runtime_env))]
        if entrypoint_num_cpus is not None:
            cmd += ["--entrypoint-num-cpus", str(entrypoint_num_cpus)]
        if entrypoint_resources is not None:
            cmd += ["--entrypoint-resources", json.dumps(dict(entrypoint_resources))]
        cmd += ["--", *argv]
        proc = subprocess.Popen(
            cmd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            with contextlib.suppress(OSError):
                self._api("POST", f"/api/jobs/{sid}/stop")
            raise TimeoutError(f"job {sid} ran over {timeout}s:\n{self.job_logs(sid)}") from None
        finally:
            self.scan()
        try:
            info = self._job_info(sid)
        except OSError as e:  # the CLI failed before the job server knew the job
            info = {"status": "NOT_FOUND", "message": f"{e}; CLI output:\n{out.decode()}"}
        return JobResult(
            submission_id=sid,
            status=info.get("status", "UNKNOWN"),
            message=info.get("message"),
            logs=self.job_logs(sid),
            cli_returncode=proc.returncode,
            cli_output=out.decode(errors="replace"),
            command=cmd,
        )

    def kill_node(self, i: int) -> list[ProcessRecord]:
        """SIGKILL every process of worker node ``i`` at once, as a lost machine would go.

        Its processes are the ones this cluster recorded in that node's ``ray start``
        session, and their children (workers, agents): never a scan by name, since other
        Ray clusters run on this machine. Returns what was killed.
        """
        if i == 0:
            raise ValueError("node 0 is the head: losing it ends the cluster")
        killed = self._kill_session(self._node_sessions[i])
        self._sessions.discard(self._node_sessions[i])
        return killed

    def _kill_session(self, session: int) -> list[ProcessRecord]:
        """SIGKILL the recorded members of one `ray start` session and their children."""
        records = {r.pid: r for r in self.scan()}
        stats = {pid: _read_stat(pid) for pid in records}
        doomed = {pid for pid, stat in stats.items() if stat and stat.session == session}
        while True:  # children of the node's processes, whatever session they made
            children = {pid for pid, stat in stats.items() if stat and stat.ppid in doomed}
            if children <= doomed:
                break
            doomed |= children
        killed = [records[pid] for pid in sorted(doomed)]
        for record in killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(r.alive() for r in killed):
            time.sleep(0.1)
        return killed

    def add_node(self, resources: Mapping[str, float] | None = None) -> int:
        """Start one more node (a replacement for a lost one, say); returns its index.

        ``resources`` are its custom resources (default: a new ``node_x`` of its own).
        Waits until the cluster counts it alive.
        """
        i = len(self.node_ips)
        if i >= _MAX_NODES:
            raise ValueError(f"at most {_MAX_NODES} nodes in one port block")
        self.node_ips.append(f"127.0.0.{i + 2}")
        self.node_resources.append(dict(resources or {f"node_{chr(ord('a') + i)}": 1}))
        self._start_node(i)
        self._wait_for_nodes([self.node_ips[i]])
        return i

    def nodes(self) -> list[dict[str, Any]]:
        """The cluster's nodes as Ray's state API lists them (node_id, node_ip, state...)."""
        reply = self._api("GET", "/api/v0/nodes?limit=100")
        return list(reply["data"]["result"]["result"])

    def job_logs(self, submission_id: str) -> str:
        """The driver's output, from the job server's REST API."""
        try:
            return str(self._api("GET", f"/api/jobs/{submission_id}/logs").get("logs", ""))
        except OSError as e:
            return f"<logs unavailable: {e}>"

    def api(self, method: str, path: str, *, auth: bool = True) -> Any:
        """Call the dashboard's REST API, with the cluster's token unless ``auth=False``."""
        return self._api(method, path, auth=auth)

    def scan(self) -> list[ProcessRecord]:
        """Record and return the live processes that belong to this cluster.

        A process is ours when it carries this cluster's marker in its environment, has
        the cluster directory on its command line, or sits in a session one of ours leads.
        Sessions matter: processes that rename themselves (setproctitle) lose their
        readable environment, and ``ray start`` daemons outlive the command that started
        them. The test process's own session is never treated as ours.
        """
        if self.root is None:
            return []
        marker = f"{MARKER_VAR}={self.cluster_id}".encode()
        root = f"{self.root}/".encode()
        protected = {0, os.getsid(0), os.getsid(1) if Path("/proc/1").exists() else 0}
        stats = [s for s in map(_read_stat, _pids()) if s is not None and s.state != "Z"]
        ours: dict[int, _Stat] = {}
        for s in stats:
            if s.pid == os.getpid():
                continue
            env = _read_bytes(f"/proc/{s.pid}/environ").split(b"\0")
            if marker in env or root in _read_bytes(f"/proc/{s.pid}/cmdline"):
                ours[s.pid] = s
                if s.session == s.pid and s.session not in protected:
                    self._sessions.add(s.session)
        # A session with no member left is forgotten: its ID may later lead someone else's.
        self._sessions &= {s.session for s in stats}
        for s in stats:
            if s.session in self._sessions and s.pid != os.getpid():
                ours[s.pid] = s
        for s in ours.values():
            if s.pid not in self._records or not self._records[s.pid].alive():
                cmdline = _read_bytes(f"/proc/{s.pid}/cmdline").replace(b"\0", b" ")
                self._records[s.pid] = ProcessRecord(
                    s.pid, s.start_ticks, s.name, cmdline.decode(errors="replace").strip()
                )
        return [self._records[pid] for pid in ours]

    # ---------------------------------------------------------------------------- internals

    def _build_env(self, autoscaler_metric_port: int, dashboard_metric_port: int) -> dict[str, str]:
        assert self.root is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED_ENV_PREFIXES)}
        env.update(
            {
                # Job entrypoints say `python`: make it this interpreter, with Ray in it.
                "PATH": f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}",
                "TMPDIR": str(self.root / "tmp"),
                MARKER_VAR: self.cluster_id,
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": str(self.token_path),
                "RAY_USAGE_STATS_ENABLED": "0",
                # Fixed-port defaults (44217, 44227) that would clash with another Ray.
                "AUTOSCALER_METRIC_PORT": str(autoscaler_metric_port),
                "DASHBOARD_METRIC_PORT": str(dashboard_metric_port),
                # pyarrow (Arrow's AWS SDK) and boto3 both honour AWS_ENDPOINT_URL; dummy
                # keys, no shared config/credentials files and no instance metadata lookups.
                "AWS_ENDPOINT_URL": self.s3_endpoint,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": str(self.root / "aws-config-absent"),
                "AWS_SHARED_CREDENTIALS_FILE": str(self.root / "aws-credentials-absent"),
            }
        )
        env.update(self._extra_env)
        return env

    def _start_moto(self) -> None:
        assert self.root is not None
        log = open(self.root / "logs" / "moto.log", "wb")  # noqa: SIM115 - closed by moto's exit
        moto_env = {k: v for k, v in self.env.items() if not k.startswith("AWS_")}
        self._moto = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.s3_port)],
            env=moto_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._sessions.add(self._moto.pid)
        s3 = self.s3_client()
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                s3.list_buckets()
                break
            except Exception:
                if self._moto.poll() is not None or time.monotonic() > deadline:
                    tail = self._log_tail("moto.log")
                    raise RuntimeError(f"moto_server did not start:\n{tail}") from None
                time.sleep(0.2)
        for bucket in self.buckets:
            s3.create_bucket(Bucket=bucket)

    def _start_node(self, i: int) -> None:
        assert self.root is not None
        ip, node_port, worker_port = self.node_ips[i], self._node_ports[i], self._worker_ports[i]
        cmd = [str(BIN_DIR / "ray"), "start", f"--node-ip-address={ip}"]
        if i == 0:
            cmd += [
                "--head",
                f"--port={self.gcs_port}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={self.client_server_port}",
            ]
        else:
            cmd += [f"--address={self.address}"]
        cmd += [
            f"--num-cpus={self.num_cpus}",
            "--num-gpus=0",
            f"--resources={json.dumps(self.node_resources[i])}",
            f"--object-store-memory={self.object_store_bytes}",
            f"--temp-dir={self.root / f'ray-{i}'}",
            f"--object-manager-port={node_port}",
            f"--node-manager-port={node_port + 1}",
            f"--dashboard-agent-listen-port={node_port + 2}",
            f"--dashboard-agent-grpc-port={node_port + 3}",
            f"--runtime-env-agent-port={node_port + 4}",
            f"--metrics-export-port={node_port + 5}",
            f"--min-worker-port={worker_port}",
            f"--max-worker-port={worker_port + _WORKER_PORTS - 1}",
            "--disable-usage-stats",
            "--log-style=record",
        ]
        # Ray gives a raylet 30 s to register with the GCS: on a loaded machine it may
        # not, so a node that timed out is killed and started again.
        for attempt in range(_START_ATTEMPTS):
            log_name = f"ray-start-{i}-{attempt}.log"
            rc = self._run_ray_start(i, cmd, log_name)
            if rc == 0 or "timed out during startup" not in self._log_tail(log_name):
                break
            self._kill_session(self._node_sessions[i])
        if rc != 0:
            raise RuntimeError(f"`{shlex.join(cmd)}` failed ({rc}):\n{self._log_tail(log_name)}")

    def _run_ray_start(self, i: int, cmd: list[str], log_name: str) -> int:
        assert self.root is not None
        with open(self.root / "logs" / log_name, "wb") as log:
            # A new session per `ray start`: its daemons stay in it after it exits.
            proc = subprocess.Popen(
                cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            self._sessions.add(proc.pid)
            self._node_sessions[i] = proc.pid
            try:
                rc = proc.wait(self.start_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                rc = -1
        self.scan()
        return rc

    def _wait_for_nodes(self, ips: list[str]) -> None:
        """Wait until the node at each of `ips` is alive: named by address, since a node
        just killed may still be counted alive for a while."""
        deadline = time.monotonic() + self.start_timeout
        alive: set[str] = set()
        while time.monotonic() < deadline:
            try:
                alive = {x["node_ip"] for x in self.nodes() if x.get("state") == "ALIVE"}
                if alive >= set(ips):
                    return
            except (OSError, KeyError, TypeError, ValueError):
                pass
            time.sleep(0.5)
        missing = sorted(set(ips) - alive)
        raise RuntimeError(f"nodes {missing} not alive after {self.start_timeout}s")

    def _api(self, method: str, path: str, *, auth: bool = True) -> Any:
        req = urllib.request.Request(self.dashboard_url + path, method=method)
        if auth:
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def _job_info(self, submission_id: str) -> dict[str, Any]:
        # `ray job submit` returns once the job is terminal; the REST view may lag a moment.
        info: dict[str, Any] = {}
        for _ in range(50):
            info = self._api("GET", f"/api/jobs/{submission_id}") or {}
            if info.get("status") in TERMINAL_JOB_STATES:
                break
            time.sleep(0.2)
        return info

    def _terminate(
        self, which: Callable[[ProcessRecord], bool], *, reverse: bool = False, grace: float = 8.0
    ) -> bool:
        """SIGTERM the live processes ``which`` selects, SIGKILL them after ``grace`` s."""
        targets = sorted((r for r in self.scan() if which(r)), key=lambda r: r.pid)
        if reverse:
            targets.reverse()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for r in targets:
                if r.alive():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(r.pid, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(r.alive() for r in targets):
                time.sleep(0.1)
        return bool(targets)

    def _keep_logs(self, dest: Path) -> None:
        assert self.root is not None
        dest = dest / "loopback-cluster-logs"
        with contextlib.suppress(OSError):
            shutil.copytree(self.root / "logs", dest, dirs_exist_ok=True)
        for i in range(len(self.node_ips)):
            with contextlib.suppress(OSError):
                shutil.copytree(
                    self.root / f"ray-{i}" / "session_latest" / "logs",
                    dest / f"node-{i}",
                    dirs_exist_ok=True,
                    ignore_dangling_symlinks=True,
                )

    def _log_tail(self, name: str, n: int = 60) -> str:
        assert self.root is not None
        lines = (self.root / "logs" / name).read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])


def _pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def pids_with_marker(cluster_id: str) -> list[int]:
    """Live processes whose environment carries this cluster's marker (a teardown check)."""
    marker = f"{MARKER_VAR}={cluster_id}".encode()
    return [
        pid
        for pid in _pids()
        if pid != os.getpid()
        and marker in _read_bytes(f"/proc/{pid}/environ").split(b"\0")
        and (stat := _read_stat(pid)) is not None
        and stat.state != "Z"
    ]


def auth_rejected(cluster: LoopbackCluster, path: str = "/api/jobs/") -> int | None:
    """The HTTP status the job server answers without a token (401 when auth is on)."""
    try:
        cluster.api("GET", path, auth=False)
    except urllib.error.HTTPError as e:
        return e.code
    return None
