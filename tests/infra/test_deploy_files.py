"""The deployment files (infra/docker, infra/k8s, infra/spark) cannot run here: they are linted
with real tools (compose schema, Kubernetes API schemas, yamllint, shellcheck) and checked
against the code: config keys, CLI commands and options, names that refer to each other."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from curamix.config import build_config, env_overrides, load_config
from tests.infra.cluster import REPO

DOCKER = REPO / "infra" / "docker"
K8S = REPO / "infra" / "k8s"
SPARK = REPO / "infra" / "spark"
COMPOSE = DOCKER / "docker-compose.yml"
K8S_VERSION = "1.30.0"
"""Kubernetes API version the manifests are validated against (also valid on later ones)."""

YAMLLINT = """
extends: default
rules:
  line-length: {max: 160}
  document-start: disable
  truthy: {check-keys: false}
  comments: {min-spaces-from-content: 1}
"""


def _venv_tool(name: str) -> str:
    """A console script of the dev extra, next to this interpreter (or on PATH)."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is missing: install the dev extra (pip install -e '.[dev]')"
    return found


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _k8s_docs() -> list[tuple[Path, dict]]:
    out = []
    for f in sorted(K8S.glob("*.yaml")):
        out += [(f, d) for d in yaml.safe_load_all(f.read_text()) if d]
    return out


def _k8s_resources() -> list[dict]:
    return [d for _, d in _k8s_docs() if d["kind"] != "Kustomization"]


def _pod_specs() -> list[tuple[str, dict]]:
    """(resource name, pod spec) of every Deployment and Job."""
    out = []
    for d in _k8s_resources():
        if d["kind"] in ("Deployment", "Job"):
            out.append((d["metadata"]["name"], d["spec"]["template"]["spec"]))
    return out


def _k8s_pipeline(tmp_path: Path) -> Path:
    cm = next(d for d in _k8s_resources() if d["kind"] == "ConfigMap")
    path = tmp_path / "pipeline.yaml"
    path.write_text(cm["data"]["pipeline.yaml"])
    return path


# ----------------------------------------------------------------------------- linters


def test_yaml_files_pass_yamllint():
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    conf = YamlLintConfig(YAMLLINT)
    files = [COMPOSE, DOCKER / "pipeline.yaml", *sorted(K8S.glob("*.yaml"))]
    problems = [
        f"{f.relative_to(REPO)}:{p.line}: {p.desc} ({p.rule})"
        for f in files
        for p in linter.run(f.read_text(), conf)
    ]
    assert not problems, "\n".join(problems)


def test_compose_file_matches_the_compose_spec():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_k8s_manifests_match_the_api_schemas():
    import kubernetes_validate

    resources = _k8s_resources()
    kinds = sorted({d["kind"] for d in resources})
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Job",
        "Namespace",
        "PersistentVolumeClaim",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    for d in resources:
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)  # raises on any error


def test_k8s_schema_check_catches_mistakes():
    import kubernetes_validate

    job = next(d for d in _k8s_resources() if d["kind"] == "Job")
    job["spec"]["template"]["spec"]["restartPolicy"] = ["Never"]
    job["spec"]["template"]["spec"]["containers"][0]["imagePullPolicie"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {f.name for f in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kust["resources"]) == sorted(files)


def test_shell_scripts_pass_shellcheck():
    scripts = [
        *sorted(SPARK.glob("*.sh")),
        DOCKER / "entrypoint.sh",
        REPO / "infra" / "check_java.sh",
    ]
    for s in scripts:
        out = subprocess.run(["bash", "-n", str(s)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
    out = subprocess.run(
        [_venv_tool("shellcheck"), *map(str, scripts)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


# ----------------------------------------------------------------------------- scripts


def test_cluster_scripts_refuse_bad_arguments(tmp_path):
    start = SPARK / "start-cluster.sh"
    for args, msg in [
        (["--workers", "0"], "--workers must be a positive integer"),
        (["--memory", "lots"], "--memory must look like"),
        (["--port", "0"], "fixed ports"),
        (["--frobnicate"], "unknown argument"),
    ]:
        out = subprocess.run(
            ["bash", str(start), *args, "--state-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 2 and msg in out.stderr, (args, out.stderr)
    assert not list(tmp_path.iterdir())  # nothing started, nothing written
    out = subprocess.run(["bash", str(start), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--workers N" in out.stdout
    out = subprocess.run(
        ["bash", str(SPARK / "stop-cluster.sh"), "--state-dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and "nothing to stop" in out.stderr


# ----------------------------------------------------------------------------- consistency


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def _all_envs() -> list[tuple[str, dict[str, str]]]:
    """(where, environment) of every compose service and every k8s container."""
    out = [
        (f"compose:{n}", dict(s.get("environment", {}))) for n, s in _compose()["services"].items()
    ]
    for name, spec in _pod_specs():
        out += [(f"k8s:{name}/{c['name']}", _env(c)) for c in spec["containers"]]
    return out


def _all_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every compose service command and every k8s container's args."""
    out = [(f"compose:{n}", s["command"]) for n, s in _compose()["services"].items()]
    for name, spec in _pod_specs():
        out += [(f"k8s:{name}/{c['name']}", c["args"]) for c in spec["containers"]]
    return out


def test_pipeline_files_are_valid_configs(tmp_path):
    docker_cfg = load_config(DOCKER / "pipeline.yaml", use_env=False)
    k8s_cfg = load_config(_k8s_pipeline(tmp_path), use_env=False)
    assert docker_cfg.spark.master == "spark://spark-master:7077"
    assert k8s_cfg.spark.master.startswith("k8s://https://kubernetes.default.svc")
    for cfg in (docker_cfg, k8s_cfg):
        assert cfg.stages == ["ingest", "dedup", "dsir", "select"]
        assert cfg.run_dir.startswith("/data/")  # on the volume every executor mounts
        assert all(i.path.startswith("/data/") for i in cfg.ingest.inputs)


def test_curamix_env_vars_are_config_keys(tmp_path):
    """Every CURAMIX_* variable the files set is a config field, and it agrees with the
    pipeline file the same service reads."""
    k8s_pipeline = load_config(_k8s_pipeline(tmp_path), use_env=False)
    docker_pipeline = load_config(DOCKER / "pipeline.yaml", use_env=False)
    from curamix.pipelines.session import SPARK_SECRET_ENV

    seen = 0
    for where, env in _all_envs():
        for name, value in env.items():
            if not name.startswith("CURAMIX_"):
                continue
            if name == SPARK_SECRET_ENV:  # a secret the session reads, not a config field
                assert not env_overrides({name: value}), name
                continue
            seen += 1
            overrides = env_overrides({name: value})
            assert overrides, f"{where}: {name} names no config field"
            base = k8s_pipeline if where.startswith("k8s") else docker_pipeline
            cfg = build_config(base.model_dump(mode="json"), overrides, use_env=False)
            assert cfg.spark.master == value == base.spark.master, (where, name)
    assert seen >= 4


def test_prefect_settings_are_real_and_point_at_the_server():
    import prefect.settings

    compose = _compose()["services"]
    server_port = compose["prefect-server"]["command"][-1]
    services = {d["metadata"]["name"]: d for d in _k8s_resources() if d["kind"] == "Service"}
    for where, env in _all_envs():
        for name, value in env.items():
            if name.startswith("PREFECT_"):
                assert hasattr(prefect.settings, name), f"{where}: {name} is not a Prefect setting"
            if name == "PREFECT_API_URL":
                u = urlsplit(value)
                assert u.path == "/api", (where, value)
                if where.startswith("compose"):
                    assert u.hostname in compose and str(u.port) == server_port, (where, value)
                else:
                    svc, ns = u.hostname.split(".")[:2]
                    assert svc in services and services[svc]["metadata"]["namespace"] == ns
                    assert u.port in [p["port"] for p in services[svc]["spec"]["ports"]]


def test_commands_exist(tmp_path):
    """curamix subcommands and their options exist in the CLI; Prefect commands in Prefect's;
    image roles (spark-master, spark-worker) in the entrypoint; the work pool is prefect.yaml's."""
    from typer.main import get_command
    from typer.testing import CliRunner

    from curamix.cli import app

    cli = get_command(app)
    entrypoint = (DOCKER / "entrypoint.sh").read_text()
    pools = {
        d["work_pool"]["name"]
        for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    }
    prefect_calls = []
    for where, argv in _all_commands():
        if argv[0] == "curamix":
            sub = argv[1]
            assert sub in cli.commands, f"{where}: no `curamix {sub}` command"
            help_text = CliRunner().invoke(app, [sub, "--help"], terminal_width=200).output
            for opt in (a for a in argv[2:] if a.startswith("--")):
                assert opt in help_text, f"{where}: `curamix {sub}` has no {opt}"
            for path in (a for a in argv[2:] if a.endswith(".yaml")):
                assert Path(path).name == "pipeline.yaml"
        elif argv[0] == "prefect":
            prefect_calls.append(argv)
            if "worker" in argv:
                assert argv[argv.index("--pool") + 1] in pools, where
        else:
            assert re.search(rf"^\s*{re.escape(argv[0])}\)", entrypoint, re.M), (where, argv)
    # One Prefect CLI call checks the global --no-prompt and the worker options used.
    out = subprocess.run(
        [_venv_tool("prefect"), "--no-prompt", "worker", "start", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    for opt in ("--pool", "--type"):
        assert opt in out.stdout
    assert {tuple(c[:3]) for c in prefect_calls} >= {("prefect", "server", "start")}


def test_names_refer_to_each_other(tmp_path):
    """Namespaces, service accounts, config maps, volume claims and images line up."""
    res = _k8s_resources()
    by_kind: dict[str, set[str]] = {}
    for d in res:
        by_kind.setdefault(d["kind"], set()).add(d["metadata"]["name"])
    ns = by_kind["Namespace"]
    assert ns == {"curamix"}
    assert all(d["metadata"].get("namespace") in ns for d in res if d["kind"] != "Namespace")
    images = set()
    for name, spec in _pod_specs():
        if "serviceAccountName" in spec:
            assert spec["serviceAccountName"] in by_kind["ServiceAccount"], name
        for v in spec.get("volumes", []):
            if "configMap" in v:
                assert v["configMap"]["name"] in by_kind["ConfigMap"], name
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in by_kind["PersistentVolumeClaim"]
        images |= {c["image"] for c in spec["containers"]}
    conf = load_config(_k8s_pipeline(tmp_path), use_env=False).spark.conf
    assert conf["spark.kubernetes.namespace"] in ns
    assert images == {conf["spark.kubernetes.container.image"]}
    claims = [v for k, v in conf.items() if k.endswith(".options.claimName")]
    assert claims and all(c in by_kind["PersistentVolumeClaim"] for c in claims)
    binding = next(d for d in res if d["kind"] == "RoleBinding")
    assert binding["roleRef"]["name"] in by_kind["Role"]
    # The driver pods (Spark executors connect back to them) advertise their pod IP.
    for name, spec in _pod_specs():
        env = _env(spec["containers"][0])
        if env.get("CURAMIX_SPARK__MASTER", "").startswith("k8s://"):
            assert env["SPARK_LOCAL_HOSTNAME"] == "$(POD_IP)", name
            assert spec["serviceAccountName"] == "curamix-spark", name
    # Compose: one image for all services; Spark and Prefect UIs published on loopback only.
    compose = _compose()
    tags = {s.get("image") for s in compose["services"].values()}
    assert tags == {"${CURAMIX_IMAGE:-curamix:0.1.0}"}
    ports = [p for s in compose["services"].values() for p in s.get("ports", [])]
    assert ports and all(p.startswith("127.0.0.1:") for p in ports), ports
    assert all(
        s["spec"].get("type", "ClusterIP") == "ClusterIP" for s in res if s["kind"] == "Service"
    )


def test_dockerfile_installs_what_the_code_needs():
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", text, re.M)
    assert "openjdk-17-jre-headless" in text
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    for line in text.splitlines():
        if line.startswith("COPY "):
            for src in shlex.split(line)[1:-1]:
                assert (REPO / src).exists(), src
                assert f"!{src}" in ignore or f"!{src}/**" in ignore, f"{src} filtered out"
    entry = re.search(r'ENTRYPOINT \[.*"(/opt/curamix/[^"]+)"\]', text)
    assert entry and (REPO / entry.group(1).removeprefix("/opt/curamix/")).is_file()


# ----------------------------------------------------------------------------- auth

REQUIRED_VAR = re.compile(r"^\$\{(?P<var>[A-Z0-9_]+):\?[^}]+\}$")
"""A compose value that must come from the environment or .env (``${VAR:?message}``: compose
refuses to start when VAR is unset or empty)."""
SECRET_NAME = re.compile(r"AUTH_STRING|SECRET|PASSWORD|TOKEN|API_KEY")
K8S_AUTH_REF = {"name": "curamix-auth", "key": "prefect-auth-string"}


def _required(where: str, env: dict, name: str) -> str:
    """The variable that ``name`` takes its value from (a required ``${VAR:?...}``)."""
    assert name in env, f"{where}: no {name}"
    m = REQUIRED_VAR.match(str(env[name]))
    assert m, f"{where}: {name} must be a required ${{VAR:?...}} reference, not {env[name]!r}"
    return m.group("var")


def test_compose_servers_require_auth():
    """The Prefect server wants an auth string and every Prefect client sends the same one;
    the Spark master, the workers and every driver share one Spark secret; both come from
    the environment (.env), with no default."""
    from curamix.pipelines.session import SPARK_SECRET_ENV

    services = _compose()["services"]
    envs = {n: dict(s.get("environment", {})) for n, s in services.items()}
    server = _required("prefect-server", envs["prefect-server"], "PREFECT_SERVER_API_AUTH_STRING")
    spark = set()
    clients = drivers = 0
    for name, env in envs.items():
        if "PREFECT_API_URL" in env:
            clients += 1
            assert _required(name, env, "PREFECT_API_AUTH_STRING") == server, name
        role = services[name]["command"][0]
        if role in ("spark-master", "spark-worker") or "CURAMIX_SPARK__MASTER" in env:
            drivers += "CURAMIX_SPARK__MASTER" in env
            spark.add(_required(name, env, SPARK_SECRET_ENV))
    assert clients >= 2 and drivers >= 2
    assert spark == {SPARK_SECRET_ENV} and server != SPARK_SECRET_ENV
    # No secret anywhere in the file: every secret-like variable is a required reference.
    for name, env in envs.items():
        for key in (k for k in env if SECRET_NAME.search(k)):
            _required(name, env, key)
    assert not re.search(r"[0-9a-fA-F]{24,}", COMPOSE.read_text())


def test_k8s_servers_require_auth(tmp_path):
    """The Prefect server and its clients read the auth string from the Secret that
    kustomization.yaml generates from secrets.env (a file the user makes: kept out of git and
    out of the image); Spark authenticates (the driver makes a secret per run)."""
    for name, spec in _pod_specs():
        for c in spec["containers"]:
            where = f"{name}/{c['name']}"
            env = {e["name"]: e for e in c.get("env", [])}
            is_server = c["args"][:3] == ["prefect", "server", "start"]
            wanted = (["PREFECT_SERVER_API_AUTH_STRING"] if is_server else []) + (
                ["PREFECT_API_AUTH_STRING"] if "PREFECT_API_URL" in env else []
            )
            for key in wanted:
                assert key in env, f"{where}: no {key}"
            for key in (k for k in env if SECRET_NAME.search(k)):
                assert "value" not in env[key], f"{where}: {key} is written in the manifest"
                assert env[key]["valueFrom"]["secretKeyRef"] == K8S_AUTH_REF, where
    refs = [
        e
        for _, spec in _pod_specs()
        for c in spec["containers"]
        for e in c.get("env", [])
        if e["name"] in ("PREFECT_SERVER_API_AUTH_STRING", "PREFECT_API_AUTH_STRING")
    ]
    assert len(refs) == 3  # the server, the worker and the deploy Job
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    [gen] = kust["secretGenerator"]
    assert gen["name"] == K8S_AUTH_REF["name"] and gen["namespace"] == "curamix"
    assert gen["envs"] == ["secrets.env"] and "literals" not in gen and "files" not in gen
    assert "secrets.env" in (K8S / ".gitignore").read_text().split()
    assert ".env" in (DOCKER / ".gitignore").read_text().split()
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    for secret_file in ("infra/k8s/secrets.env", "infra/docker/.env"):
        assert ignore.index(secret_file) > ignore.index("!infra/**"), secret_file
    conf = load_config(_k8s_pipeline(tmp_path), use_env=False).spark.conf
    assert conf["spark.authenticate"] == "true"
    assert not any("secret" in k for k in conf)  # Spark on Kubernetes makes one per run
    for f in K8S.glob("*.yaml"):
        assert not re.search(r"[0-9a-fA-F]{24,}", f.read_text()), f


def test_entrypoint_gives_the_spark_daemons_the_secret_in_a_private_file(tmp_path):
    """spark-master and spark-worker refuse to start without CURAMIX_SPARK_SECRET; with it,
    spark-class runs with spark.authenticate on and the secret in a spark-defaults.conf that
    only its owner can read (settings already there kept), and on no command line."""
    home = tmp_path / "spark"
    (home / "bin").mkdir(parents=True)
    (home / "conf").mkdir()
    (home / "conf" / "spark-defaults.conf").write_text(
        "spark.worker.cleanup.enabled true\nspark.authenticate false\n"
    )
    fake = home / "bin" / "spark-class"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        'printf "%s\\n" "$@" >"$OUT/argv"\n'
        'echo "$SPARK_CONF_DIR" >"$OUT/conf_dir"\n'
        'echo "${CURAMIX_SPARK_SECRET:-unset}" >"$OUT/env_secret"\n'
    )
    fake.chmod(0o755)
    secret = "f" * 64
    env = {
        k: v for k, v in os.environ.items() if k not in ("SPARK_CONF_DIR", "CURAMIX_SPARK_SECRET")
    }
    env.update(SPARK_HOME=str(home), OUT=str(tmp_path))
    roles = [["spark-master", "--host", "spark-master"], ["spark-worker", "spark://m:7077"]]
    for argv in roles:
        out = subprocess.run(
            ["bash", str(DOCKER / "entrypoint.sh"), *argv], env=env, capture_output=True, text=True
        )
        assert out.returncode == 2 and "needs CURAMIX_SPARK_SECRET" in out.stderr, out.stderr
        assert not (tmp_path / "argv").exists()
        out = subprocess.run(
            ["bash", str(DOCKER / "entrypoint.sh"), *argv],
            env={**env, "CURAMIX_SPARK_SECRET": secret},
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        args = (tmp_path / "argv").read_text().split()
        assert args[0].startswith("org.apache.spark.deploy.") and args[1:] == argv[1:]
        assert secret not in " ".join(args)
        assert (tmp_path / "env_secret").read_text().strip() == "unset"
        conf_dir = Path((tmp_path / "conf_dir").read_text().strip())
        conf = conf_dir / "spark-defaults.conf"
        assert conf.read_text().splitlines() == [
            "spark.worker.cleanup.enabled true",
            "spark.authenticate true",
            f"spark.authenticate.secret {secret}",
        ]
        assert conf.stat().st_mode & 0o777 == 0o600 and conf_dir.stat().st_mode & 0o777 == 0o700
        shutil.rmtree(conf_dir)
        (tmp_path / "argv").unlink()
