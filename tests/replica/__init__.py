"""A production replica: a test host in the state the seed describes, before this tool ran.

Built from the seed's text (the operations README, shared/seeds/000_*.txt), never from this
project's templates, so that adoption is tested against what the operator really has:

- the git clone /home/ubuntu/watchme-server-configs (owned by ubuntu, one commit, clean) with
  sites-available/api.hey-watch.me (hand-written, HTTPS with certbot's paths, port 80
  redirecting, two locations no registry knows: `= /health` and `/status/`),
  systemd/watchme-*.service in the seed's unit template, watchme-infrastructure.service,
  docker-compose.infra.yml (watchme-network 172.27.0.0/16), scripts/, setup_server.sh;
- linked into /etc by the clone's own setup_server.sh, run as ubuntu;
- the seed's 13 containers on watchme-network at the seed's IPs (plus the avatar uploader of
  its Nginx example, still off the network), each started by its unit through
  docker-compose v1 (`pull -q` fails, ignored by its `-` prefix), from busybox-static images
  imported inside the host, each answering only under its internal path;
- the operator's crontab line for check-infrastructure.sh.

Building takes minutes, so the result is committed as an image keyed by a hash of this
package (builder + data files) and the base image; hosts start from it in seconds.

    python -m tests.replica build       # build (or reuse) the replica image
    python -m tests.replica start       # start one, print its state (removed with stop)
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from watchme import testhost as th

HERE = Path(__file__).resolve().parent
FILES = HERE / "files"
CLONE = "/home/ubuntu/watchme-server-configs"
SITE = "api.hey-watch.me"
ECR = "754724220380.dkr.ecr.ap-southeast-2.amazonaws.com"  # seed: the ECR registry
NETWORK = "watchme-network"

# What each container is, in the seed's words (its table of connected containers).
DESCRIPTIONS = {
    "watchme-scheduler-prod": "APIスケジューラー",
    "api-transcriber": "Whisper書き起こし",
    "watchme-api-manager-prod": "API管理UI",
    "opensmile-aggregator": "感情スコア集計",
    "watchme-vault-api": "Gateway API",
    "api_gen_prompt_mood_chart": "Vibe Aggregator",
    "api-gpt-v1": "スコアリング",
    "watchme-web-prod": "Webダッシュボード",
    "vibe-transcriber-v2": "Azure Speech",
    "api_sed_v1-sed_api-1": "音声イベント検出",
    "opensmile-api": "音声特徴量抽出",
    "watchme-admin": "管理画面",
    "api-sed-aggregator": "音声イベント集計",
    "watchme-avatar-uploader": "Avatar Uploader API",
}
# Compose service keys where the container name is compose's own (<project>-<service>-1).
SERVICE_KEYS = {"api_sed_v1-sed_api-1": "sed_api"}


@dataclass(frozen=True)
class Service:
    unit: str  # without .service
    container: str
    ip: str | None  # None: not on watchme-network (yet)
    port: int
    public_path: str
    upstream_path: str
    compose_file: str
    mem_limit: str | None
    image: str

    @property
    def image_ref(self) -> str:
        return f"{ECR}/{self.image}:latest"

    @property
    def answer(self) -> str:
        """What the stub serves at its internal path: which container, which path."""
        return f"{self.container} {self.upstream_path}"


def services() -> list[Service]:
    out = []
    for line in (FILES / "services.tsv").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        unit, container, ip, port, pub, up, compose, mem, image = line.split("\t")
        out.append(Service(unit, container, None if ip == "-" else ip, int(port), pub, up,
                           compose, None if mem == "-" else mem, image))
    return out


# Extra locations only the hand-written site has: public path -> what answers.
EXTRA_ROUTES = {"/health": "ok", "/status/": "status-page ok"}


def unit_text(s: Service) -> str:
    """The seed's unit template (section 3, ②), filled in."""
    f = s.compose_file
    return (
        "[Unit]\n"
        f"Description=WatchMe {DESCRIPTIONS[s.container]} ({s.container})\n"
        "After=docker.service watchme-infrastructure.service\n"
        "Requires=docker.service watchme-infrastructure.service\n"
        "\n"
        "[Service]\n"
        "TimeoutStartSec=0\n"
        "\n"
        "# 常にECRから最新のイメージを取得\n"
        f"ExecStartPre=-/usr/bin/docker-compose -f {f} pull -q\n"
        "\n"
        "# Docker Composeでコンテナを起動\n"
        f"ExecStart=/usr/bin/docker-compose -f {f} up\n"
        "\n"
        "# サービス停止時にコンテナを停止\n"
        f"ExecStop=/usr/bin/docker-compose -f {f} down\n"
        "\n"
        "Restart=always\n"
        "RestartSec=10\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def compose_text(s: Service) -> str:
    """The seed's compose template (section 3, ⓪): external watchme-network, fixed IP.

    File format 2.4 where the service sets a memory limit (v1 ignores mem_limit in 3.x)."""
    key = SERVICE_KEYS.get(s.container, s.container.replace("_", "-"))
    www = "/www" + s.upstream_path
    script = (f"mkdir -p {www} && echo '{s.answer}' > {www}index.html && "
              f"exec /bin/busybox httpd -f -p {s.port} -h /www")
    lines = [f"version: '{'2.4' if s.mem_limit else '3.8'}'", "", "services:", f"  {key}:",
             f"    image: {s.image_ref}", f"    container_name: {s.container}",
             "    init: true",
             f"    command: [\"/bin/busybox\", \"sh\", \"-c\", \"{script}\"]",
             f"    ports:\n      - \"{s.port}:{s.port}\""]
    if s.mem_limit:
        lines.append(f"    mem_limit: {s.mem_limit}")
    if s.ip:
        lines += ["    networks:", f"      {NETWORK}:", f"        ipv4_address: {s.ip}", "",
                  "networks:", f"  {NETWORK}:", "    external: true"]
    return "\n".join(lines) + "\n"


def stage(dest: Path) -> None:
    """Everything the build copies into the host, under dest."""
    shutil.copytree(FILES / "clone", dest / "clone")
    shutil.copytree(FILES / "rootfs", dest / "rootfs")
    shutil.copy(FILES / "build.sh", dest / "build.sh")
    images = []
    for s in services():
        (dest / "clone" / "systemd" / f"{s.unit}.service").write_text(unit_text(s))
        compose = dest / "rootfs" / s.compose_file.lstrip("/")
        compose.parent.mkdir(parents=True, exist_ok=True)
        compose.write_text(compose_text(s))
        images.append(s.image_ref)
    (dest / "images").write_text("\n".join(images) + "\n")


def recipe_hash() -> str:
    """What shapes the image: the base image, the data files, the generators, the commit prep
    (not the waiting or test helpers, so editing those does not rebuild)."""
    h = hashlib.sha256(th.image_tag().encode())
    for p in sorted(FILES.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(FILES)).encode() + b"\0" + p.read_bytes())
    for part in (services, unit_text, compose_text, stage):
        h.update(inspect.getsource(part).encode())
    h.update(repr((DESCRIPTIONS, SERVICE_KEYS, ECR, NETWORK, COMMIT_PREP)).encode())
    return h.hexdigest()[:12]


def image_tag() -> str:
    return f"watchme-replica:{recipe_hash()}"


def _exec(name: str, script: str, timeout: float = 600) -> str:
    r = subprocess.run(["docker", "exec", name, "bash", "-c", script], capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"replica: {script[:200]!r} failed ({r.returncode}):\n"
                           f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r.stdout


def curl_command(path: str, scheme: str = "https") -> str:
    """curl on the host through Nginx, with SNI for server_name (the seed's public URL)."""
    port = 443 if scheme == "https" else 80
    return (f"curl -sk --max-time 5 --resolve {SITE}:{port}:127.0.0.1 "
            f"-o /dev/stdout -w '\\n%{{http_code}}' {shlex.quote(f'{scheme}://{SITE}{path}')}")


def ready_script() -> str:
    """A shell check: every container running, every route answering through Nginx."""
    checks = [f"[ \"$(docker inspect -f '{{{{.State.Running}}}}' {s.container} 2>/dev/null)\" = true ]"
              for s in services()]
    for s in services():
        checks.append(f"{curl_command(s.public_path)} | grep -q '^200$'")
    for path in EXTRA_ROUTES:
        checks.append(f"{curl_command(path)} | grep -q '^200$'")
    return " && ".join(checks)


def wait_ready(name: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    check = ready_script()
    while time.monotonic() < deadline:
        r = subprocess.run(["docker", "exec", name, "bash", "-c", check], capture_output=True)
        if r.returncode == 0:
            return
        time.sleep(2)
    states = subprocess.run(["docker", "exec", name, "sh", "-c",
                             "systemctl --no-pager list-units 'watchme-*' --all; docker ps -a"],
                            capture_output=True, text=True).stdout
    raise TimeoutError(f"replica {name}: not ready after {timeout}s\n{states}")


def build(host: th.TestHost) -> None:
    """Turn a fresh test host into the replica (minutes: packages, images, 14 units)."""
    with tempfile.TemporaryDirectory(prefix="watchme-replica-") as tmp:
        stage(Path(tmp))
        subprocess.run(["docker", "cp", f"{tmp}/.", f"{host.name}:/root/replica-src"], check=True)
    _exec(host.name, "bash /root/replica-src/build.sh /root/replica-src && rm -rf /root/replica-src",
          timeout=1200)
    wait_ready(host.name)


# Before the commit: containers removed by their units' `down` (the next boot starts them
# through the same units, as after a reboot of the real server); host keys removed (each host
# makes its own at boot); dockerd's runtimes/ and tmp/ removed, because dockerd renames them
# at start and a rename of a directory from an image layer fails (overlayfs: EXDEV).
COMMIT_PREP = ("systemctl stop 'watchme-*.service' status-page.service nginx cron "
               "&& systemctl stop docker.socket docker.service "
               "&& rm -f /etc/ssh/ssh_host_* "
               "&& rm -rf /var/lib/docker/runtimes /var/lib/docker/tmp")


def build_image() -> str:
    """The replica image, built once per recipe (a file lock keeps parallel runs to one build)."""
    tag = image_tag()
    if th.image_exists(tag):
        return tag
    th.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(th.CACHE_DIR / "replica.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if th.image_exists(tag):
            return tag
        th.log(f"building {tag} (once per recipe, a few minutes)")
        host = th.start()
        try:
            build(host)
            _exec(host.name, COMMIT_PREP)
            subprocess.run(["docker", "commit", "-m", f"watchme replica {recipe_hash()}",
                            host.name, tag], check=True, capture_output=True)
        finally:
            th.stop(host.name)
    return tag


def start(keep: bool = False) -> th.TestHost:
    """A fresh replica host from the cached image, ready (every route answers)."""
    # Docker and 14 units start with sshd; on a loaded machine that takes minutes
    host = th.start(image=build_image(), keep=keep, boot_timeout=600)
    try:
        wait_ready(host.name)
    except BaseException:
        th.stop(host.name)
        raise
    return host
