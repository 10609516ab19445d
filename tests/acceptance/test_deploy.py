"""Deploy material: fly.toml, Dockerfile and Procfile agree, and the Procfile's commands start.

The Dockerfile is kept in step with the code without a Docker engine: its runtime stage must
install the Debian package of every program the handlers declare (`handlers.programs.Program`)
and of Tesseract's data for every language `LANGUAGES` accepts; and its Python install is
replayed (the build stage's COPY lines into an empty folder, `.dockerignore` honoured, its RUN in
a fresh venv) and that venv migrates a database, sends, drains and serves.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import psycopg
import pytesseract
import pytest
from psycopg import sql

import handlers
from handlers.language import ESPEAK, LANGUAGES, TESSERACT, tesseract_data
from handlers.programs import Program
from tests.conftest import with_dbname
from tests.support.dockerfile import Dockerfile, Stage, apt_installs, expand, parse, replay_copies
from tests.support.ports import free_port
from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parent.parent.parent
# Top-level keys of Fly's app configuration reference (https://fly.io/docs/reference/configuration/).
FLY_TOP_LEVEL = {
    "app", "primary_region", "kill_signal", "kill_timeout", "swap_size_mb", "console_command",
    "build", "deploy", "env", "http_service", "services", "checks", "processes", "vm", "mounts",
    "metrics", "statics", "files", "experimental", "restart",
}  # fmt: skip


def fly() -> dict[str, object]:
    return tomllib.loads((ROOT / "fly.toml").read_text(encoding="utf-8"))


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text(encoding="utf-8").splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


def seconds(value: object) -> float:
    if isinstance(value, int | float):
        return float(value)
    match = re.fullmatch(r"(\d+)s", str(value))
    assert match, f"kill_timeout {value!r}"
    return float(match.group(1))


def test_fly_toml_has_a_web_and_a_worker_group_and_documented_keys() -> None:
    """Two process groups; HTTP and its health check on web only, on the port web listens on."""
    config = fly()
    assert set(config) <= FLY_TOP_LEVEL, set(config) - FLY_TOP_LEVEL
    processes = config["processes"]
    assert isinstance(processes, dict) and set(processes) == {"web", "worker"}
    service = config["http_service"]
    assert isinstance(service, dict)
    assert service["processes"] == ["web"]
    assert f"--port {service['internal_port']}" in processes["web"]
    assert "--host 0.0.0.0" in processes["web"]
    assert [check["path"] for check in service["checks"]] == ["/healthz"]
    assert config["deploy"] == {"release_command": "pgmq-worker migrate"}
    assert {p for vm in config["vm"] for p in vm["processes"]} == {"web", "worker"}  # type: ignore[attr-defined]


def test_fly_gives_the_worker_longer_than_its_shutdown_grace() -> None:
    """Fly sends SIGTERM and waits kill_timeout: it must exceed the worker's grace (and Fly's 300 s cap)."""
    config = fly()
    assert config["kill_signal"] == "SIGTERM"
    grace = WorkerSettings().shutdown_grace.total_seconds()
    assert grace + 5 <= seconds(config["kill_timeout"]) <= 300


def test_fly_checks_the_worker_on_livez_and_readyz_and_scrapes_both_groups() -> None:
    """The worker group's top-level checks probe /livez and /readyz on its metrics port; [[metrics]]
    names each group's port, as the settings in [env] set them (the web's never its app port)."""
    config = fly()
    env = config["env"]
    assert isinstance(env, dict)
    worker = WorkerSettings(
        **{k.removeprefix("PGMQ_WORKER_").lower(): v for k, v in env.items() if "WEB" not in k}
    )
    worker_port = int(env["PGMQ_WORKER_METRICS_PORT"])
    web_port = int(env["PGMQ_WORKER_WEB_METRICS_PORT"])
    assert worker.metrics_port == worker_port and worker.metrics_host == "::"  # the settings accept them
    checks = config["checks"]
    assert isinstance(checks, dict)
    probed = {(c["path"], c["port"], c["type"], tuple(c["processes"])) for c in checks.values()}
    assert probed == {
        ("/livez", worker_port, "http", ("worker",)),
        ("/readyz", worker_port, "http", ("worker",)),
    }
    for check in checks.values():
        assert seconds(check["timeout"]) < seconds(check["interval"])
    metrics = config["metrics"]
    assert isinstance(metrics, list)
    assert {(m["port"], m["path"], tuple(m["processes"])) for m in metrics} == {
        (worker_port, "/metrics", ("worker",)),
        (web_port, "/metrics", ("web",)),
    }
    service = config["http_service"]
    assert isinstance(service, dict)
    assert web_port != service["internal_port"]  # never public on the app's port


def test_the_autoscaler_app_scales_the_worker_group_of_this_app() -> None:
    """deploy/autoscaler/fly.toml: fly-autoscaler's image, this app and its worker group, a query on
    an exported series, a started-machine count that names the metric, and no token in the file."""
    autoscaler = tomllib.loads((ROOT / "deploy" / "autoscaler" / "fly.toml").read_text(encoding="utf-8"))
    assert str(autoscaler["build"]["image"]).startswith("flyio/fly-autoscaler:")  # type: ignore[index]
    env = autoscaler["env"]
    assert isinstance(env, dict)
    assert env["FAS_APP_NAME"] == fly()["app"]
    assert env["FAS_PROCESS_GROUP"] == "worker"
    assert env["FAS_PROMETHEUS_ADDRESS"].startswith("https://api.fly.io/prometheus/")
    assert "pgmq_worker_queue_messages" in env["FAS_PROMETHEUS_QUERY"]
    assert env["FAS_PROMETHEUS_METRIC_NAME"] in env["FAS_STARTED_MACHINE_COUNT"]
    assert not {"FAS_API_TOKEN", "FAS_PROMETHEUS_TOKEN"} & set(env)  # secrets, never in the file


def test_the_dockerfile_runs_unprivileged_in_exec_form() -> None:
    """python:3.11-slim, a non-root USER before the command, and a JSON-array CMD (signals reach it)."""
    lines = [line.strip() for line in (ROOT / "deploy" / "Dockerfile").read_text().splitlines()]
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    # One pinned Debian release for both stages: the venv built in the first runs in the second,
    # and the runtime stage's package names (and the sizes in docs/how-to/deploy-fly.md) are
    # those of bookworm.
    assert froms and set(froms) == {"python:3.11-slim-bookworm"}
    users = [i for i, line in enumerate(lines) if line.startswith("USER ")]
    [cmd] = [i for i, line in enumerate(lines) if line.startswith("CMD ")]
    assert users and users[-1] < cmd and lines[users[-1]].split()[1] not in {"root", "0"}
    assert json.loads(lines[cmd][len("CMD ") :]) == ["pgmq-worker", "run"]
    assert (ROOT / fly()["build"]["dockerfile"]).is_file()  # type: ignore[index]


def test_procfile_and_fly_run_the_same_commands() -> None:
    """The Procfile's web and worker lines run the same subcommands as fly.toml's groups."""
    processes = fly()["processes"]
    lines = procfile()
    assert set(lines) == {"web", "worker"}
    for name, command in lines.items():
        assert shlex.split(command)[:2] == shlex.split(processes[name])[:2]  # type: ignore[index]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["web", "worker"])
def test_procfile_commands_start_and_stop_cleanly(name: str, db_url: str, tmp_path: Path) -> None:
    """Each Procfile line, run by a shell as a process manager would, starts and exits 0 on SIGTERM."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGMQ_WORKER_")}
    env.update({"DATABASE_URL": db_url, "PGMQ_WORKER_LOG_FORMAT": "json", "PORT": str(port)})
    # As a deploy sets it: the web line binds 0.0.0.0, where it refuses to serve without a secret.
    env["SUPABASE_JWT_SECRET"] = "deploy-test-secret-of-32-characters!"
    log = tmp_path / f"{name}.log"
    with log.open("wb") as out:
        # exec: the shell becomes the command, so the signal reaches it (as with honcho/foreman).
        proc = subprocess.Popen(
            ["/bin/sh", "-c", f"exec {procfile()[name]}"], env=env, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 60
        while not ready(name, port, log):
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, f"{name} did not start: {log.read_text()[-2000:]}"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(30)
    assert status == 0, log.read_text()[-2000:]


def ready(name: str, port: int, log: Path) -> bool:
    if name == "worker":
        return '"worker.started"' in log.read_text()
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# -- the runtime stage installs what the handlers run ----------------------------------------------


def dockerfile() -> Dockerfile:
    return parse((ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8"))


def stage_values(file: Dockerfile, stage: Stage, build_args: dict[str, str]) -> dict[str, str]:
    return stage.args(file.global_defaults(build_args), build_args)


def runtime_installs(build_args: dict[str, str]) -> set[str]:
    """The Debian packages the runtime stage's `apt-get install` lines name, built with these arguments."""
    file = dockerfile()
    values = stage_values(file, file.runtime, build_args)
    runs = [expand(run.args, values) for run in file.runtime.of("RUN")]
    return {package for run in runs for packages in apt_installs(run) for package in packages}


def handler_modules() -> list[ModuleType]:
    """Every module of the `handlers` package (not only those `pgmq-worker run` imports by default)."""
    names = [m.name for m in pkgutil.walk_packages(handlers.__path__, f"{handlers.__name__}.")]
    return [importlib.import_module(name) for name in names]


def required_packages() -> dict[str, str]:
    """Each Debian package the reference handlers need, with the code that needs it."""
    needed: dict[str, str] = {}
    for module in handler_modules():
        for name, value in vars(module).items():
            if isinstance(value, Program):
                needed[value.package] = f"{module.__name__}.{name} runs {value.command!r}"
    for code, language in LANGUAGES.items():
        needed[f"tesseract-ocr-{language.tesseract}"] = (
            f"LANGUAGES[{code!r}] ({language.name}) is read with Tesseract's {language.tesseract!r} data"
        )
    return needed


def test_the_handlers_declare_the_programs_they_run() -> None:
    """The language pipeline's programs are declared, and pytesseract runs the declared command."""
    commands = {v.command for m in handler_modules() for v in vars(m).values() if isinstance(v, Program)}
    assert {"tesseract", "espeak-ng"} <= commands
    assert pytesseract.pytesseract.tesseract_cmd == TESSERACT.command


def test_the_runtime_stage_installs_every_package_the_handlers_need() -> None:
    """Each declared program's package and each language's Tesseract data is in the runtime apt-get."""
    needed = required_packages()
    installed = runtime_installs({})
    missing = sorted(set(needed) - installed)
    assert not missing, "deploy/Dockerfile's runtime stage does not install:\n" + "\n".join(
        f"  {package}  ({needed[package]})" for package in missing
    )


def test_the_runtime_stage_installs_as_root_without_recommends_and_drops_the_apt_lists() -> None:
    """The apt-get RUN is valid sh, runs as root, skips recommends and drops the apt lists in its layer."""
    runtime = dockerfile().runtime
    keywords = [i.keyword for i in runtime.instructions]
    installs = [
        i for i, run in enumerate(runtime.instructions) if run.keyword == "RUN" and apt_installs(run.args)
    ]
    assert installs, "the runtime stage runs no apt-get install"
    for index in installs:
        run = runtime.instructions[index].args
        assert index < keywords.index("USER"), "apt-get install needs root: before USER"
        assert "--no-install-recommends" in run
        assert "rm -rf /var/lib/apt/lists/*" in run
        syntax = subprocess.run(["/bin/sh", "-n", "-c", run], capture_output=True, text=True, check=False)
        assert syntax.returncode == 0, f"not valid sh: {syntax.stderr}"


def test_the_slim_build_argument_installs_no_system_packages() -> None:
    """`--build-arg SYSTEM_PACKAGES=` builds the image without any Debian package beyond the base."""
    assert runtime_installs({"SYSTEM_PACKAGES": ""}) == set()
    assert runtime_installs({"SYSTEM_PACKAGES": "poppler-utils"}) == {"poppler-utils"}


# -- the image's Python install, replayed --------------------------------------------------------------


@pytest.fixture(scope="session")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's /venv: the build stage's COPY lines into an empty /src, then its RUN there."""
    file = dockerfile()
    build = file.stage("build")
    root = tmp_path_factory.mktemp("image")
    src, venv, shim = root / "src", root / "venv", root / "bin"
    [workdir] = build.of("WORKDIR")
    assert workdir.args == "/src", "the replay puts the context copy where WORKDIR says"
    copied = replay_copies(build, ROOT, src)
    assert "pyproject.toml" in copied
    # The base image's `python` is CPython 3.11 itself; the host's is this interpreter's base.
    shim.mkdir()
    (shim / "python").symlink_to(Path(sys._base_executable).resolve())
    env = stage_env(build, venv, {**host_env(), "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}"})
    values = stage_values(file, build, {})
    [run] = build.of("RUN")
    command = expand(run.args, values).replace("/venv", str(venv))
    done = subprocess.run(
        ["/bin/sh", "-c", command], cwd=src, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return venv


def host_env() -> dict[str, str]:
    """This process's environment without the test run's settings and the dev venv."""
    prefixes = ("PGMQ_WORKER_", "VIRTUAL_ENV", "PYTHON", "DATABASE_URL")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def stage_env(stage: Stage, venv: Path, env: dict[str, str]) -> dict[str, str]:
    """`env` with the stage's ENV lines applied (`$NAME` expanded, /venv at the replayed venv)."""
    env = dict(env)
    for instruction in stage.of("ENV"):
        for word in shlex.split(instruction.args):
            name, _, value = word.partition("=")
            env[name] = expand(value, env).replace("/venv", str(venv))
    return env


def image_env(venv: Path, database_url: str) -> dict[str, str]:
    """What a container of the image gets: the runtime stage's ENV (PATH on the venv) and the database."""
    return stage_env(dockerfile().runtime, venv, {**host_env(), "DATABASE_URL": database_url})


def image_program(env: dict[str, str]) -> str:
    """`pgmq-worker` as the image's PATH finds it: it must be the replayed venv's, not the dev venv's."""
    found = shutil.which("pgmq-worker", path=env["PATH"])
    assert found, f"no pgmq-worker on {env['PATH']}"
    assert Path(found).parent == Path(env["PATH"].split(os.pathsep)[0]), f"{found} is not the image's"
    return found


def run_image(cwd: Path, env: dict[str, str], *args: str, timeout: float = 120) -> str:
    """Run `pgmq-worker` as the image's CMD does (from PATH); its stdout (and stderr when it fails)."""
    done = subprocess.run(
        ["pgmq-worker", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
        check=False, executable=image_program(env),
    )  # fmt: skip
    assert done.returncode == 0, f"pgmq-worker {' '.join(args)}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done.stdout


@pytest.fixture
def empty_db_url(server_url: str) -> Iterator[str]:
    """A new database with nothing in it: the image's own `migrate` installs pgmq and the schema."""
    name = f"pgmqw_img_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_dbname(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
            )
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def language_tools_missing() -> str | None:
    """Why the sample (German) language page cannot run here, or None."""
    missing = [p.package for p in (TESSERACT, ESPEAK) if shutil.which(p.command) is None]
    if not missing and "deu" not in pytesseract.get_languages(config=""):
        missing.append(tesseract_data("deu"))
    return ", ".join(missing) or None


@pytest.mark.slow
@pytest.mark.timeout(360)  # the first one also builds the venv (a pip install, ~20-60 s)
def test_the_image_install_runs_the_cli_the_migrations_and_the_reference_handlers(
    image_venv: Path, empty_db_url: str, tmp_path: Path
) -> None:
    """The replayed image venv: --help, migrate applies every migration, send, run --burst drains."""
    env = image_env(image_venv, empty_db_url)
    assert "run" in run_image(tmp_path, env, "--help")
    migrated = run_image(tmp_path, env, "migrate")
    for migration in sorted((ROOT / "db" / "migrations").glob("*.sql")):
        assert f"applied {migration.stem}" in migrated, migrated
    jobs = [("text_stats", {"text": "one image, two process groups, one image"})]
    why_not = language_tools_missing()
    if why_not and os.environ.get("PGMQ_WORKER_REQUIRE_LANGUAGE_TOOLS"):
        pytest.fail(f"needs {why_not}")
    if not why_not:  # the sample German page: package data, OCR and speech, no LLM
        jobs.append(("language_page", {}))
    sent = [json.loads(run_image(tmp_path, env, "send", q, json.dumps(p))) for q, p in jobs]
    run_image(tmp_path, env, "run", "--burst", timeout=180)
    with psycopg.connect(empty_db_url) as conn:
        for job in sent:
            row = conn.execute(
                "SELECT status, error FROM pgmq_worker.jobs WHERE id = %s", (job["job_id"],)
            ).fetchone()
            assert row == ("succeeded", None), (job["queue"], row)


@pytest.mark.slow
@pytest.mark.timeout(360)  # the first one also builds the venv (a pip install, ~20-60 s)
def test_the_image_install_serves_the_web_process(
    image_venv: Path, empty_db_url: str, tmp_path: Path
) -> None:
    """fly.toml's web command from the replayed image venv answers /healthz and exits 0 on SIGTERM."""
    port = free_port()
    env = image_env(image_venv, empty_db_url)
    run_image(tmp_path, env, "migrate")
    log = tmp_path / "web.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["pgmq-worker", "web", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path, env=env, stdout=out, stderr=out, executable=image_program(env),
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not ready("web", port, log):
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, f"web did not start: {log.read_text()[-2000:]}"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(30)
    assert status == 0, log.read_text()[-2000:]
