"""The three ways to install the operator say the same thing: deploy/*.yaml, the kustomize base
(deploy/kustomization.yaml) and the Helm chart (deploy/helm/pgop), all at the package version.

`helm lint`/`helm template` and `kubectl kustomize` run the real binaries the harness builds
(~/.cache/pgop/bin); without them those tests skip and say how to build them."""
from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from e2e.harness import build
from e2e.harness.images import OPERATOR_IMAGE, package_version

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHART = DEPLOY / "helm" / "pgop"
BASE = DEPLOY
OVERLAY = REPO / "examples" / "kustomize" / "overlay"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def by_key(objects: list[dict]) -> dict[tuple[str, str, str], dict]:
    return {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in objects}


# --- one version, copies that cannot drift ---------------------------------------------------------

def test_every_install_path_uses_the_package_version_never_dev():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert package_version() == VERSION
    assert chart["version"] == VERSION and chart["appVersion"] == VERSION, \
        "deploy/helm/pgop/Chart.yaml: version and appVersion must be pyproject.toml's version"
    assert OPERATOR_IMAGE == f"localhost/pgop-operator:{VERSION}"
    for name in ("operator.yaml", "operator-namespaced.yaml"):
        [deployment] = [d for d in load(DEPLOY / name) if d["kind"] == "Deployment"]
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == OPERATOR_IMAGE, name
    overlay = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    assert overlay["images"][0]["newTag"] == VERSION
    assert yaml.safe_load((CHART / "values.yaml").read_text())["image"]["tag"] == ""  # = appVersion


@pytest.mark.parametrize("copy, original", [
    *[(CHART / "crds" / f.name, f) for f in sorted((REPO / "crds").glob("*.yaml"))],
    *[(CHART / "files" / name, DEPLOY / name) for name in ("admission.yaml", "operator.yaml", "operator-namespaced.yaml")],
], ids=lambda p: str(p.relative_to(REPO)) if isinstance(p, Path) else p)
def test_the_chart_links_to_the_repository_s_files(copy, original):
    """No copies: the chart's CRDs and manifests are links (Helm follows them when it loads or
    packages the chart), so they cannot drift."""
    assert copy.is_symlink() and copy.resolve() == original.resolve(), f"{copy.relative_to(REPO)} must link to {original}"


def test_the_chart_has_no_crd_the_repository_lacks():
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == sorted(p.name for p in (REPO / "crds").glob("*.yaml"))


# --- the pod meets the restricted Pod Security Standard ---------------------------------------------

def restricted_violations(pod_spec: dict) -> list[str]:
    """The checks of the "restricted" profile that apply to this pod (Kubernetes' pod-security.md)."""
    found = []
    pod = pod_spec.get("securityContext", {})
    for c in pod_spec["containers"] + pod_spec.get("initContainers", []):
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{c['name']}: allowPrivilegeEscalation must be false")
        if sc.get("capabilities", {}).get("drop") != ["ALL"] or sc.get("capabilities", {}).get("add"):
            found.append(f"{c['name']}: capabilities must drop ALL and add nothing")
        if not sc.get("runAsNonRoot", pod.get("runAsNonRoot")):
            found.append(f"{c['name']}: runAsNonRoot")
        if sc.get("runAsUser", pod.get("runAsUser")) == 0:
            found.append(f"{c['name']}: runAsUser 0")
        if sc.get("seccompProfile", pod.get("seccompProfile", {})).get("type") not in ("RuntimeDefault", "Localhost"):
            found.append(f"{c['name']}: seccompProfile")
        if sc.get("privileged") or c.get("ports") and any("hostPort" in p for p in c["ports"]):
            found.append(f"{c['name']}: privileged or hostPort")
    allowed = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
               "projected", "secret"}
    for v in pod_spec.get("volumes", []):
        if not set(v) - {"name"} <= allowed:
            found.append(f"volume {v['name']}: type not allowed")
    if pod_spec.get("hostNetwork") or pod_spec.get("hostPID") or pod_spec.get("hostIPC"):
        found.append("host namespaces")
    return found


def test_the_plain_manifests_are_restricted_and_their_namespace_enforces_it():
    for name in ("operator.yaml", "operator-namespaced.yaml"):
        objects = load(DEPLOY / name)
        [deployment] = [d for d in objects if d["kind"] == "Deployment"]
        assert restricted_violations(deployment["spec"]["template"]["spec"]) == [], name
        [namespace] = [d for d in objects if d["kind"] == "Namespace"]
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        # `pgop run`, never the image's entrypoint: --all-namespaces there would win over
        # PGOP_WATCH_NAMESPACES and turn namespaced mode cluster-wide.
        assert container["command"] == ["pgop", "run"] and "--all-namespaces" not in container["args"]
        assert container["readinessProbe"]["httpGet"]["path"] == container["livenessProbe"]["httpGet"]["path"]
        assert container["resources"]["limits"]["memory"]
    assert "--all-namespaces" not in (REPO / "images" / "operator" / "Containerfile").read_text().split("ENTRYPOINT")[-1]


# --- helm ------------------------------------------------------------------------------------------

def _binary(component: str, name: str) -> Path:
    path = build.by_name()[component].bindir / name
    if path.exists():
        return path
    found = shutil.which(name)
    if found:
        return Path(found)
    pytest.skip(f"{name} is not built: python -m e2e.harness build {component} (or make env-up)")


@pytest.fixture(scope="module")
def helm(tmp_path_factory):
    binary = _binary("helm", "helm")
    home = tmp_path_factory.mktemp("helm-home")
    env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_DATA_HOME": str(home / "data")}

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run([str(binary), *args], text=True, capture_output=True, env=env, timeout=60)
        if check and p.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}")
        return p
    return run


def template(helm, *args: str, namespace: str = "pgop-system") -> list[dict]:
    out = helm("template", "pgop", str(CHART), "--namespace", namespace, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_helm_lint_passes_in_both_modes(helm):
    for args in ([], ["--set", "watchNamespaces={shop,billing}"], ["--set", "config.VAULT_ADDR=http://vault:8200"]):
        out = helm("lint", "--strict", str(CHART), *args)
        assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout, out.stdout


def test_the_chart_renders_what_deploy_operator_yaml_and_admission_yaml_say(helm):
    chart = by_key(template(helm))
    plain = by_key(load(DEPLOY / "operator.yaml") + load(DEPLOY / "admission.yaml"))
    # The same objects; the Namespace is Helm's (--create-namespace), the metrics Service is extra.
    assert set(chart) - {("Service", "pgop-system", "pgop-operator-metrics")} == \
        set(plain) - {("Namespace", "", "pgop-system")}
    for key, want in plain.items():
        if key[0] in ("Namespace", "ServiceAccount"):
            continue
        got = chart[key]
        if key[0] in ("ClusterRole", "Role"):
            assert got["rules"] == want["rules"], key
        elif key[0] in ("ClusterRoleBinding", "RoleBinding"):
            assert (got["roleRef"], got["subjects"]) == (want["roleRef"], want["subjects"]), key
        elif key[0] == "Deployment":
            assert got["spec"] == want["spec"]  # the pod, probes, resources, security context, replicas
            assert got["metadata"]["labels"]["app"] == "pgop-operator"
        else:  # the admission policies and their bindings
            assert got["spec"] == want["spec"], key
            assert got["metadata"]["labels"]["app.kubernetes.io/part-of"] == "pgop"
    assert chart[("Deployment", "pgop-system", "pgop-operator")]["metadata"]["labels"][
        "app.kubernetes.io/version"] == VERSION


def test_the_image_tag_defaults_to_the_package_version_and_can_be_set(helm):
    def image(*args):
        [d] = [o for o in template(helm, *args) if o["kind"] == "Deployment"]
        return d["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image() == f"localhost/pgop-operator:{VERSION}"
    assert image("--set", "image.repository=registry.example.com/pgop", "--set", "image.tag=0.2.0") == \
        "registry.example.com/pgop:0.2.0"


def test_the_admission_policies_name_the_release_namespace_service_account(helm):
    objects = template(helm, namespace="dbops")
    policies = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ValidatingAdmissionPolicy"}
    assert set(policies) == {"pgop-pginstance-roles", "pgop-tenant-paths", "pgop-backup-status",
                             "pgop-instance-status"}
    text = yaml.safe_dump(list(policies.values()))
    assert "system:serviceaccount:pgop-system:" not in text
    assert text.count("system:serviceaccount:dbops:pgop-operator") == 3
    assert not [o for o in template(helm, "--set", "admissionPolicies.enabled=false")
                if o["kind"].startswith("ValidatingAdmissionPolicy")]


def test_namespaced_mode_binds_the_same_rules_in_each_watched_namespace_only(helm):
    chart = by_key(template(helm, "--set", "watchNamespaces={shop,billing}", namespace="dbops"))
    narrow = by_key(load(DEPLOY / "operator-namespaced.yaml"))
    for name in ("pgop-operator-namespaced", "pgop-operator-cluster"):
        assert chart[("ClusterRole", "", name)]["rules"] == narrow[("ClusterRole", "", name)]["rules"]
    assert ("ClusterRole", "", "pgop-operator") not in chart
    assert [k for k in chart if k[0] == "ClusterRoleBinding"] == [("ClusterRoleBinding", "", "pgop-operator-cluster")]
    for ns in ("shop", "billing"):
        binding = chart[("RoleBinding", ns, "pgop-operator")]
        assert binding["roleRef"]["name"] == "pgop-operator-namespaced"
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pgop-operator", "namespace": "dbops"}]
    container = chart[("Deployment", "dbops", "pgop-operator")]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["PGOP_WATCH_NAMESPACES"]["value"] == "shop,billing"
    assert container["command"] == ["pgop", "run"]


def test_settings_become_a_configmap_whose_change_rolls_the_pods(helm):
    def render(value):
        objects = by_key(template(helm, "--set", f"config.VAULT_ADDR={value}", "--set", "config.PGOP_RDS_POLL_SECONDS=30"))
        pod = objects[("Deployment", "pgop-system", "pgop-operator")]["spec"]["template"]
        return objects[("ConfigMap", "pgop-system", "pgop-operator-config")]["data"], pod["metadata"]["annotations"]
    data, annotations = render("https://vault:8200")
    assert data == {"VAULT_ADDR": "https://vault:8200", "PGOP_RDS_POLL_SECONDS": "30"}
    assert annotations["checksum/config"] != render("https://vault2:8200")[1]["checksum/config"]
    assert not [o for o in template(helm) if o["kind"] in ("ConfigMap", "Secret")]


def test_helm_installs_the_repository_crds(helm):
    crds = [o for o in template(helm, "--include-crds") if o["kind"] == "CustomResourceDefinition"]
    assert sorted(c["metadata"]["name"] for c in crds) == sorted(
        f"{p.stem}.pgop.io" for p in (REPO / "crds").glob("*.yaml"))


@pytest.mark.parametrize("args, field", [
    (["--set", "watchNamespaces={Shop}"], "watchNamespaces"),
    (["--set", "replicas=0"], "replicas"),
    (["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
    (["--set", "replicas=2", "--set", "leaderElection=false"], "leaderElection"),
    (["--set", "credentials.secretName="], "secretName"),
])
def test_bad_values_are_refused_naming_the_field(helm, args, field):
    p = helm("template", "pgop", str(CHART), *args, check=False)
    assert p.returncode != 0 and field in p.stderr, p.stderr


def test_the_chart_pod_is_restricted_in_every_mode(helm):
    for args in ([], ["--set", "watchNamespaces={shop}"], ["--set", "metrics.enabled=false"]):
        [d] = [o for o in template(helm, *args) if o["kind"] == "Deployment"]
        assert restricted_violations(d["spec"]["template"]["spec"]) == []


# --- kustomize -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kustomize():
    kubectl = _binary("kubernetes", "kubectl")

    def run(path: Path) -> list[dict]:
        p = subprocess.run([str(kubectl), "kustomize", str(path)], text=True, capture_output=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return [d for d in yaml.safe_load_all(p.stdout) if d]
    return run


def test_the_kustomize_base_renders_deploy_operator_yaml_and_admission_yaml(kustomize):
    rendered = by_key(kustomize(BASE))
    assert rendered == by_key(load(DEPLOY / "operator.yaml") + load(DEPLOY / "admission.yaml"))


def test_the_example_overlay_sets_the_image_settings_and_memory(kustomize):
    rendered = by_key(kustomize(OVERLAY))
    container = rendered[("Deployment", "pgop-system", "pgop-operator")]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"registry.example.com/pgop/operator:{VERSION}"
    assert container["resources"]["limits"]["memory"] == "1Gi"
    config = rendered[("ConfigMap", "pgop-system", "pgop-operator-config")]
    assert config["data"]["VAULT_ADDR"].startswith("https://") and "TOKEN" not in " ".join(config["data"])
    assert container["envFrom"][0]["configMapRef"]["name"] == "pgop-operator-config"
