"""Kubernetes manifests in deploy/kubernetes: schema-valid and wired together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "kubernetes"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
K8S_VERSION = "1.30.0"

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed (pip install it)"
)


def docs() -> dict[str, dict[str, Any]]:
    """Every resource by `Kind/name`."""
    out: dict[str, dict[str, Any]] = {}
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


def pod_spec(kind_name: str) -> dict[str, Any]:
    spec: dict[str, Any] = docs()[kind_name]["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_schema_valid_strict(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_refuses_a_typo() -> None:
    doc = docs()["Deployment/netcheck-controller"]
    doc["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(p.name for p in MANIFESTS)


def test_controller_wiring() -> None:
    all_docs = docs()
    spec = pod_spec("Deployment/netcheck-controller")
    assert all_docs["Deployment/netcheck-controller"]["spec"]["strategy"]["type"] == "Recreate"
    volumes = {v["name"]: v for v in spec["volumes"]}
    claim = volumes["data"]["persistentVolumeClaim"]["claimName"]
    assert f"PersistentVolumeClaim/{claim}" in all_docs
    (container,) = spec["containers"]
    args = container["args"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    # the CA, the server's certificate and keys, and the read token: Secrets mounted as files
    pki = volumes["pki"]["secret"]
    assert pki["secretName"] == "netcheck-pki"
    assert {i["path"] for i in pki["items"]} == {
        "ca.pem",
        "ca-key.pem",
        "server.pem",
        "server-key.pem",
    }
    assert args[args.index("--pki") + 1] == mounts["pki"]
    assert volumes["read-token"]["secret"]["secretName"] == "netcheck-read-token"
    assert args[args.index("--read-token-file") + 1] == mounts["read-token"] + "/read-token"
    assert "--token-file" not in args and "--insecure-http" not in args
    assert all(v["secret"]["defaultMode"] & 0o007 == 0 for v in spec["volumes"] if "secret" in v)
    assert not any(
        "valueFrom" in e and "secretKeyRef" in e["valueFrom"] for e in container.get("env", [])
    )
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"
    assert args[args.index("--db") + 1].startswith(mounts["data"] + "/")
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert spec["securityContext"]["runAsNonRoot"] is True

    service = all_docs["Service/netcheck-controller"]
    labels = all_docs["Deployment/netcheck-controller"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    port_names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names


def test_agent_daemonset() -> None:
    spec = pod_spec("DaemonSet/netcheck-agent-pio")
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    (container,) = spec["containers"]
    caps = container["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"]
    assert sorted(caps["add"]) == ["NET_BIND_SERVICE", "NET_RAW"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    env = {e["name"] for e in container["env"]}
    assert {"NETCHECK_ROLE", "NETCHECK_CONTROLLER", "NETCHECK_HOST", "NETCHECK_ADDRESS"} <= env
    args = container["args"]
    for flag in ("--controller", "--role", "--host", "--address"):
        value = args[args.index(flag) + 1]
        assert value.startswith("$(") and value[2:-1] in env, flag
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["ca"]["secret"]["secretName"] == "netcheck-ca"
    assert volumes["join"]["secret"]["secretName"] == "netcheck-join-pio"
    assert volumes["join"]["secret"]["defaultMode"] == 0o400
    assert volumes["state"]["hostPath"]["path"] == "/var/lib/netcheck-agent/pio"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert args[args.index("--ca") + 1] == mounts["ca"] + "/ca.pem"
    assert args[args.index("--state-dir") + 1] == mounts["state"]
    # each pod its own node's join token (one key per node name in the role's Secret)
    assert args[args.index("--join-token-file") + 1] == mounts["join"] + "/$(NETCHECK_HOST)"
    assert args[args.index("--controller") + 1] == "$(NETCHECK_CONTROLLER)"
    url = next(e["value"] for e in container["env"] if e["name"] == "NETCHECK_CONTROLLER")
    assert url.startswith("https://") and "--token-file" not in args
