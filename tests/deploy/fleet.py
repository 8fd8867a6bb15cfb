"""A fleet on loopback, for the tests and the balancer benchmark: real `freeze-omni serve` processes on
the tiny model, and Debian's nginx in front of them running the shipped deploy/nginx config,
unprivileged, from a temporary folder.

nginx is never a system service here: `Nginx` writes a small main config (pid, logs and temporary
files inside its folder), includes deploy/nginx/freeze-omni.conf unchanged except for its `listen`
line (a free loopback port), lists the fleet's processes as the engines, and runs `nginx -g 'daemon off;'`
as `nobody` when run as root.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.model import TinyPaths


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


ROOT = Path(__file__).resolve().parent.parent.parent
NGINX_SITE = ROOT / "deploy" / "nginx" / "freeze-omni.conf"
SHIPPED_LISTEN = "listen 8080;"
SHUTDOWN_GRACE_S = 2.0
# Per engine process: room for all the sessions of a test on one process, short greedy answers.
ENGINE_ENV = {
    "FREEZE_OMNI_MAX_SESSIONS": "24",
    # Routing, not this machine's speed: measured admission has its own tests (tests/*/test_admission.py).
    "FREEZE_OMNI_ADMISSION_MAX_LOAD": "0",
    "FREEZE_OMNI_MAX_ANSWER_TOKENS": "12",
    "FREEZE_OMNI_TOP_K": "1",
    "FREEZE_OMNI_SEED": "0",
    "FREEZE_OMNI_SHUTDOWN_GRACE_S": str(SHUTDOWN_GRACE_S),
    "FREEZE_OMNI_LOG_LEVEL": "info",
}
MAIN_CONFIG = """\
worker_processes 1;
pid nginx.pid;
error_log error.log notice;
events {{ worker_connections 512; }}
http {{
    log_format upstream '$remote_addr "$request" $status upstream=$upstream_addr';
    access_log access.log upstream;
    client_body_temp_path body;
    proxy_temp_path proxy;
    fastcgi_temp_path fastcgi;
    uwsgi_temp_path uwsgi;
    scgi_temp_path scgi;
    include {site};
}}
"""


def _wait_ready(url: str, alive: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"the process behind {url} exited while starting")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} was not ready within {timeout} s")


@dataclass
class EngineProcess:
    """One `freeze-omni serve` subprocess on a loopback port; its output goes to `log_path`."""

    instance_id: str
    port: int
    log_path: Path
    process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, tiny: TinyPaths) -> EngineProcess:
        command = [
            str(Path(sys.executable).parent / "freeze-omni"),
            "serve",
            "--model-path",
            str(tiny.model_path),
            "--llm-path",
            str(tiny.llm_path),
            "--port",
            str(self.port),
            "--instance-id",
            self.instance_id,
        ]
        env = {**os.environ, **ENGINE_ENV}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        _wait_ready(self.base_url + "/readyz", self.alive, timeout)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.wait(10)


@dataclass
class Nginx:
    """Debian's nginx with the shipped site config, in front of `engines`, on a free loopback port."""

    engines: list[EngineProcess]
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="freeze-omni-nginx-")))
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    def write_config(self) -> None:
        site = NGINX_SITE.read_text()
        assert site.count(SHIPPED_LISTEN) == 1, f"{NGINX_SITE} should listen exactly once on 8080"
        site = site.replace(SHIPPED_LISTEN, f"listen 127.0.0.1:{self.port};")
        (self.folder / "freeze-omni.conf").write_text(site)
        engines = "".join(f"server 127.0.0.1:{e.port} max_fails=1 fail_timeout=5s;\n" for e in self.engines)
        (self.folder / "freeze-omni-engines.conf").write_text(engines)
        (self.folder / "nginx.conf").write_text(MAIN_CONFIG.format(site="freeze-omni.conf"))

    def start(self) -> Nginx:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            raise RuntimeError("nginx is not installed; install it with: apt-get install -y nginx")
        self.write_config()
        user = {}
        if os.geteuid() == 0:  # never run it privileged: hand the folder to nobody and run as nobody
            user = {"user": "nobody", "group": "nogroup"}
            shutil.chown(self.folder, "nobody", "nogroup")
            for path in self.folder.iterdir():
                shutil.chown(path, "nobody", "nogroup")
        prefix = f"{self.folder}/"
        command = [binary, "-p", prefix, "-c", f"{prefix}nginx.conf", "-e", f"{prefix}error.log"]
        check = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30, **user)
        assert check.returncode == 0, check.stderr
        self.process = subprocess.Popen(
            [*command, "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **user,
        )
        _wait_ready(f"http://127.0.0.1:{self.port}/healthz", lambda: self.process.poll() is None, timeout=30)
        return self

    def log(self) -> str:
        parts = []
        for name in ("error.log", "access.log"):
            path = self.folder / name
            if path.exists():
                parts.append(f"--- nginx {name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: let workers finish
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class Fleet:
    """Two engine processes ("engine-a", "engine-b") behind one nginx."""

    engines: dict[str, EngineProcess]
    nginx: Nginx

    def logs(self) -> str:
        parts = [f"--- {name}\n{engine.log()[-4000:]}" for name, engine in self.engines.items()]
        return "\n".join([*parts, self.nginx.log()])


def start_fleet(
    tiny: TinyPaths, log_folder: Path, names: tuple[str, ...] = ("engine-a", "engine-b")
) -> Fleet:
    """Start the engine processes (in parallel), wait until each is ready, then nginx in front."""
    engines = {name: EngineProcess(name, free_port(), log_folder / f"{name}.log") for name in names}
    fleet = Fleet(engines, Nginx(list(engines.values())))
    try:
        for engine in engines.values():
            engine.start(tiny)
        for engine in engines.values():
            engine.wait_ready()
        fleet.nginx.start()
    except BaseException:
        stop_fleet(fleet)
        raise
    return fleet


def stop_fleet(fleet: Fleet) -> None:
    for engine in fleet.engines.values():
        engine.stop()
    fleet.nginx.stop()
