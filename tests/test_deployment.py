"""The deployment files: the Dockerfile and docker-compose.yml, the systemd units, the nginx
example, the production settings and requirements.txt on Windows.

No Docker engine runs on this machine and its client has no compose plugin, so neither the
image build nor `docker compose config` can run here: the files are parsed instead, and every
command they start must be a management command of this project whose options parse (a
renamed command or option fails here, not at 3 a.m.). systemd-analyze verifies the units and
nginx -t the proxy configuration (with a self-signed certificate)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from django.core.management import get_commands, load_command_class
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
VENV_PYTHON = "/opt/signplatform/.venv/bin/python"  # where the systemd units expect the installation


def management_command_parses(argv: list[str]) -> None:
    """`python manage.py <argv>` names a command of this project and its options parse."""
    name, args = argv[0], argv[1:]
    commands = get_commands()
    assert name in commands, f"manage.py {name}: no such command"
    command = load_command_class(commands[name], name)
    command.create_parser("manage.py", name).parse_args(args)  # CommandError on an unknown option


def process_argv_check(argv: list[str], *, python: tuple[str, ...] = ("python",)) -> None:
    """A process the deployment starts: the project's Python running manage.py or a file of the project."""
    assert argv[0] in python, argv
    if argv[1] == "manage.py":
        management_command_parses(argv[2:])
    else:
        assert (ROOT / argv[1]).is_file(), f"{argv[1]} is not a file of the project"


# --- Dockerfile -----------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, current = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            keyword, _, rest = current.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
            current = ""
    return instructions


def test_the_dockerfile_builds_from_a_pinned_base_runs_as_a_user_and_starts_a_real_command():
    instructions = dockerfile_instructions()
    args = dict(rest.split("=", 1) for keyword, rest in instructions if keyword == "ARG" and "=" in rest)
    bases = [rest.split()[0] for keyword, rest in instructions if keyword == "FROM"]
    for base in bases:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        assert "@sha256:" in image or re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*", image), f"unpinned base {image}"
        assert not image.endswith(":latest")
    # Two stages: the runtime stage has no compiler and no pip cache, and runs as a user.
    assert len(bases) == 2 and any("--only-binary=:all:" in rest for keyword, rest in instructions if keyword == "RUN")
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    keywords = [keyword for keyword, _ in instructions]
    assert keywords.index("USER") < keywords.index("CMD")
    for keyword, rest in instructions:
        if keyword == "COPY" and "--from=" not in rest:
            source = rest.split()[0]
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
    cmd = json.loads(next(rest for keyword, rest in instructions if keyword == "CMD"))
    process_argv_check(cmd)
    ignored = (ROOT / ".dockerignore").read_text().split()
    for secret_or_bulk in (".env", "var", ".venv", ".git"):
        assert secret_or_bulk in ignored, f".dockerignore must leave out {secret_or_bulk}"


# --- docker-compose.yml -------------------------------------------------------------------------

# The service keys of the Compose specification this file may use (a typo is not silently ignored).
COMPOSE_SERVICE_KEYS = {
    "image", "build", "init", "env_file", "environment", "volumes", "restart", "stop_grace_period", "depends_on",
    "command", "ports", "healthcheck", "profiles", "stop_signal", "user", "expose",
}
HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_docker_compose_has_every_process_with_health_checks_and_volumes_and_commands_that_exist():
    spec = compose()
    assert set(spec) <= {"name", "services", "volumes", "networks", "configs", "secrets"} | {
        k for k in spec if k.startswith("x-")}
    services = spec["services"]
    assert {"postgres", "redis", "prepare", "web", "gateway", "webhook-worker"} <= set(services)
    declared_volumes = set(spec.get("volumes") or {})
    for name, service in services.items():
        unknown = set(service) - COMPOSE_SERVICE_KEYS
        assert not unknown, f"service {name}: unknown keys {unknown}"
        assert "image" in service or "build" in service, name
        image = service.get("image", "")
        if "build" not in service:  # a public image: pinned to an exact version
            assert re.fullmatch(r"[\w./-]+:\d+(\.\d+)+[\w.-]*", image), f"service {name}: unpinned image {image}"
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in declared_volumes, f"service {name}: volume {source} is not declared"
        for other, condition in (service.get("depends_on") or {}).items():
            assert other in services, f"service {name} depends on {other}, which does not exist"
            assert condition["condition"] in ("service_started", "service_healthy", "service_completed_successfully")
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[other], f"{other} has no health check for {name} to wait for"
        if "healthcheck" in service:
            check = service["healthcheck"]
            assert set(check) <= HEALTHCHECK_KEYS and check["test"][0] in ("CMD", "CMD-SHELL")
            if service.get("build") and check["test"][0] == "CMD":
                process_argv_check(check["test"][1:])
        if service.get("build"):  # the platform's own image: its command must exist here
            process_argv_check(service["command"])
            environment = service["environment"]
            assert environment["UKEY_GATEWAY_MODE"] == "external" and environment["REDIS_URL"].startswith("redis://")
            assert "platform-var:/var/lib/signplatform" in service["volumes"]  # one set of keys for all
    for name in ("postgres", "redis", "web"):
        assert "healthcheck" in services[name], f"{name} has no health check"
    for name in ("web", "gateway", "webhook-worker"):
        assert services[name]["depends_on"]["prepare"]["condition"] == "service_completed_successfully"
    assert services["web"]["command"][2:4] == ["runplatform", "--web-only"]
    assert services["gateway"]["command"][2:] == ["ukey_gateway", "--all"]
    assert services["webhook-worker"]["command"][2:] == ["webhook_worker"]
    # The receipt worker of issue 15 has its place, described, until it exists.
    assert re.search(r"#\s+receipt-worker:", (ROOT / "docker-compose.yml").read_text())


def test_every_variable_compose_interpolates_is_documented():
    text = (ROOT / "docker-compose.yml").read_text()
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", text))
    assert used and used <= documented, f"not in .env.example: {sorted(used - documented)}"


def test_the_web_health_check_tells_a_working_process_from_a_dead_one(live_web):
    check = [sys.executable, str(ROOT / "deploy" / "healthcheck.py")]
    up = subprocess.run([*check, live_web + "/api/v1/health"], capture_output=True, text=True, timeout=30)
    assert up.returncode == 0 and up.stdout.startswith("HTTP ")
    from core.ports import port_free

    down = subprocess.run([*check, f"http://127.0.0.1:{port_free()}/api/v1/health"], capture_output=True, text=True,
                          timeout=30)
    assert down.returncode == 1 and "unhealthy" in down.stderr


@pytest.fixture(scope="module")
def live_web(tmp_path_factory):
    """A platform on the embedded defaults (its own card simulator), for the health check."""
    from tests.live import Platform, embedded_env

    tmp = tmp_path_factory.mktemp("deploy-web")
    from core.ports import port_free

    platform = Platform(embedded_env(tmp / "var", UKEY_SIMULATOR_PORT=str(port_free()),
                                     UKEY_SIMULATOR_KEY_DIR=str(tmp / "sim")), tmp).start()
    yield platform.base
    platform.stop()


# --- systemd ------------------------------------------------------------------------------------


def unit_entries(path: Path) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def test_the_systemd_units_start_real_commands_as_a_user_and_systemd_accepts_them(tmp_path):
    units = sorted((DEPLOY / "systemd").glob("*.service"))
    assert {u.name for u in units} == {"signplatform-prepare.service", "signplatform-web@.service",
                                       "signplatform-gateway.service", "signplatform-webhooks.service"}
    commands = {}
    for unit in units:
        service = dict(unit_entries(unit)["Service"])
        assert service["User"] not in ("root", "0") and service["WorkingDirectory"] == "/opt/signplatform"
        # The env file is read by the platform (python-dotenv: the same syntax as .env), not by
        # systemd, whose EnvironmentFile= would keep .env.example's inline comments as values.
        assert "SIGNPLATFORM_ENV_FILE=/etc/signplatform/env" in service["Environment"]
        assert "EnvironmentFile" not in service
        for key in ("ExecStartPre", "ExecStart"):
            if key in service:
                argv = shlex.split(service[key].replace("%i", "8000"))
                process_argv_check(argv, python=(VENV_PYTHON,))
                commands[unit.name] = argv[2:]
    assert commands["signplatform-web@.service"][:2] == ["runplatform", "--web-only"]
    assert commands["signplatform-gateway.service"] == ["ukey_gateway", "--all"]
    target = dict(unit_entries(DEPLOY / "systemd" / "signplatform.target")["Unit"])
    assert set(target["Wants"].split()) == {"signplatform-prepare.service", "signplatform-web@8000.service",
                                            "signplatform-gateway.service", "signplatform-webhooks.service"}
    # systemd's own reading: any unknown key or bad value is reported; the only complaint allowed
    # is that the installation (/opt/signplatform/.venv) is not on this machine.
    copies = []
    for unit in [*units, DEPLOY / "systemd" / "signplatform.target"]:  # side by side: they name each other
        copies.append(tmp_path / unit.name.replace("@.", "@8000."))
        shutil.copy(unit, copies[-1])
    for copy in copies:
        result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(copy)], capture_output=True,
                                text=True, timeout=60, cwd=tmp_path)
        complaints = [line for line in (result.stdout + result.stderr).splitlines()
                      if line.strip() and f"Command {VENV_PYTHON} is not executable" not in line]
        assert not complaints, f"{copy.name}: {complaints}"


# --- nginx --------------------------------------------------------------------------------------


def test_the_nginx_example_is_valid_and_does_what_the_platform_needs(tmp_path):
    conf = (DEPLOY / "nginx" / "signplatform.conf").read_text()
    assert re.search(r"^\s*underscores_in_headers on;", conf, re.M)  # the gys profile's headers
    agent = re.search(r"location /agent/v1 \{(.*?)\}", conf, re.S).group(1)
    assert "proxy_pass" in agent and "proxy_read_timeout 1h" in agent
    assert "proxy_set_header Upgrade $http_upgrade;" in conf and "proxy_set_header Connection $signplatform_connection;" \
        in conf
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in conf
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in conf
    assert re.search(r"location /static/ \{\s*alias /opt/signplatform/staticfiles/;", conf)
    # The WebSocket path nginx forwards is the one the platform routes to the agent consumer.
    from signplatform.asgi import websocket_urlpatterns

    assert [str(p.pattern) for p in websocket_urlpatterns] == ["agent/v1"]
    # nginx -t on it, with a self-signed certificate in place of the real one.
    key, cert = tmp_path / "privkey.pem", tmp_path / "fullchain.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=sign.example.com", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    site = tmp_path / "signplatform.conf"
    site.write_text(conf.replace("/etc/ssl/signplatform/privkey.pem", str(key))
                    .replace("/etc/ssl/signplatform/fullchain.pem", str(cert)))
    main = tmp_path / "nginx.conf"
    main.write_text(f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
                    f"http {{\n  access_log off;\n  include {site};\n}}\n")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    result = subprocess.run([nginx, "-t", "-q", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c",
                             str(main)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


# --- production settings ------------------------------------------------------------------------


def _check_deploy(tmp_path, env_file: str) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SECURE_", "DJANGO_"))}
    env.update(SIGNPLATFORM_ENV_FILE=env_file, SIGNPLATFORM_VAR_DIR=str(tmp_path / "var"))
    return subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


def test_check_deploy_finds_nothing_with_the_documented_production_settings(tmp_path):
    result = _check_deploy(tmp_path, str(DEPLOY / "production.env"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    # Without them it warns (HSTS, SSL redirect, the two cookies): the file is what fixes it.
    plain = _check_deploy(tmp_path, "")
    assert plain.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in plain.stderr


def test_a_dot_env_file_fills_in_what_the_environment_does_not_set(tmp_path):
    import os

    env_file = tmp_path / "platform.env"
    env_file.write_text("DASHBOARD_REFRESH_SECONDS=17   # a comment, as in .env.example\nTIME_ZONE=Europe/Berlin\n"
                        "UKEY_GATEWAY_MODE=\n")
    env = {k: v for k, v in os.environ.items() if k not in ("DASHBOARD_REFRESH_SECONDS", "TIME_ZONE",
                                                            "UKEY_GATEWAY_MODE", "REDIS_URL")}
    env.update(SIGNPLATFORM_ENV_FILE=str(env_file), SIGNPLATFORM_VAR_DIR=str(tmp_path / "var"),
               TIME_ZONE="Asia/Shanghai")  # set by the environment: it wins over the file
    code = ("from django.conf import settings as s; print(s.DASHBOARD_REFRESH_SECONDS, s.TIME_ZONE, "
            "s.UKEY_GATEWAY_MODE)")
    result = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    # An empty value (a copy of .env.example) means the default, here "embedded" without Redis.
    assert result.stdout.split()[-3:] == ["17", "Asia/Shanghai", "embedded"], result.stdout + result.stderr


def test_a_setting_that_is_not_a_number_or_a_switch_is_named_in_one_line(tmp_path):
    import os

    env_file = tmp_path / "platform.env"
    env_file.write_text("API_DB_THREADS=four\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("API_DB_THREADS", "THREAD_SWITCH_INTERVAL_MS", "SECURE_COOKIES")}
    env.update(SIGNPLATFORM_ENV_FILE=str(env_file), SIGNPLATFORM_VAR_DIR=str(tmp_path / "var"))

    def last_line(**extra) -> tuple[int, str]:
        done = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env={**env, **extra},
                              capture_output=True, text=True, timeout=120)
        return done.returncode, (done.stderr.strip().splitlines() or [""])[-1]

    code, line = last_line()
    assert code != 0
    assert line.endswith("ImproperlyConfigured: API_DB_THREADS must be a whole number, not 'four' (see .env.example)")
    code, line = last_line(API_DB_THREADS="2", THREAD_SWITCH_INTERVAL_MS="1ms")
    assert code != 0 and line.endswith("THREAD_SWITCH_INTERVAL_MS must be a number, not '1ms' (see .env.example)")
    assert last_line(API_DB_THREADS=" 2 ", THREAD_SWITCH_INTERVAL_MS="0.5")[0] == 0
    # A switch with a typo is refused too: quietly off, it could mean insecure cookies.
    code, line = last_line(API_DB_THREADS="2", SECURE_COOKIES="ture")
    assert code != 0 and line.endswith("SECURE_COOKIES must be 1 or 0 (true/false, yes/no, on/off), not 'ture' "
                                       "(see .env.example)")
    assert last_line(API_DB_THREADS="2", SECURE_COOKIES=" Off ")[0] == 0


# --- requirements.txt on Windows ----------------------------------------------------------------


def test_every_requirement_installs_on_windows_from_a_wheel_or_is_left_out_by_a_marker():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import windows_wheels
    finally:
        sys.path.pop(0)
    listed = {}
    for line in (DEPLOY / "windows-wheels.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("-")[:2]
            listed[re.sub(r"[-_.]+", "-", name).lower()] = (version, line)
            assert line.endswith(("-none-any.whl", "-win_amd64.whl")), line
    kept = set(windows_wheels.for_windows(windows_wheels.requirement_lines()))
    for line in windows_wheels.requirement_lines():
        requirement = Requirement(line)
        if line.split(";", 1)[0].strip() not in kept:
            assert "win32" in str(requirement.marker), line  # left out on Windows, on purpose
            continue
        pinned = next(iter(requirement.specifier)).version
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in listed, f"{line}: no Windows wheel listed (run python scripts/windows_wheels.py)"
        assert listed[name][0] == pinned, f"{line}: the list has {listed[name][1]}"
        for extra in requirement.extras:  # psycopg[binary] brings psycopg-binary
            assert f"{name}-{extra}" in listed, f"{line}: no wheel for the {extra} extra"
    # uvloop has no Windows build: uvicorn's loop="auto" falls back to asyncio's own loop.
    assert "uvloop" not in listed
