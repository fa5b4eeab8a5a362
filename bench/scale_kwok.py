"""Simulated nodes for bench/scale.py: KWOK (sigs.k8s.io/kwok) plays the kubelet of Node objects
the benchmark makes, so the scheduler places the operator's pods on them and they turn Running
(with a pod IP and running containers, as pgop.cluster.failover.pod_state reads them) without
any container running. The binary is an optional component of the harness build
(`python -m e2e.harness build kwok`, run by `make bench-scale`), cached by version.

The nodes carry KWOK's usual taint (kwok.x-k8s.io/node=fake:NoSchedule) and the label
type=kwok: only pods that tolerate the taint and select the label land there, i.e. the
benchmark's PgClusters, through their own spec.affinity (nodeSelector, tolerations). Nothing of
the shared environment moves.

The stages are KWOK's own "fast" ones (kustomize/stage/{node,pod}/fast, node heartbeat with
Leases; a pod that turns Running has its containers ready, so the bootstrap a Postgres pod's
agent runs takes no simulated time), and one of ours: a pgop
bootstrap pod (label pgop.io/component=bootstrap, a restore's) that runs finishes (Succeeded,
exit code 0) after BOOTSTRAP_SECONDS, as a restore would.
"""
from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path
from typing import Any

from pgop.kernel.meta import COMPONENT_BOOTSTRAP, LABEL_COMPONENT

LABEL_RUN = "bench.pgop.io/scale"  # on everything the benchmark makes: the run's id
TAINT_KEY = "kwok.x-k8s.io/node"
NODE_LABELS = {"type": "kwok"}
POD_CIDR = ipaddress.ip_network("10.252.0.0/16")  # outside the real pod (10.244/16) and service ranges
NODE_PREFIX = 22  # 1022 pod IPs per simulated node: up to 64 nodes
NODE_IP = "10.243.0.250"  # the simulated nodes' InternalIP: nothing answers there, nothing asks
BOOTSTRAP_SECONDS = 1.0

TOLERATIONS = [{"key": TAINT_KEY, "operator": "Equal", "value": "fake", "effect": "NoSchedule"}]


def node_manifest(name: str, index: int, run: str, pods: int = 1000) -> dict[str, Any]:
    subnets = list(POD_CIDR.subnets(new_prefix=NODE_PREFIX))
    if index >= len(subnets):
        raise ValueError(f"at most {len(subnets)} simulated nodes (pod CIDR {POD_CIDR}/{NODE_PREFIX} each)")
    cidr = str(subnets[index])
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {**NODE_LABELS, "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", LABEL_RUN: run},
            "annotations": {TAINT_KEY: "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": [{"key": TAINT_KEY, "value": "fake", "effect": "NoSchedule"}],
                 "podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"allocatable": {"cpu": "1k", "memory": "1Ti", "pods": str(pods)},
                   "capacity": {"cpu": "1k", "memory": "1Ti", "pods": str(pods)}},
    }


def command(kwok: Path, kubeconfig: str, config: Path, run: str) -> list[str]:
    return [str(kwok), f"--kubeconfig={kubeconfig}", f"--config={config}",
            f"--manage-nodes-with-label-selector={LABEL_RUN}={run}",
            f"--node-ip={NODE_IP}", "--node-lease-duration-seconds=40",
            "--v=WARN"]  # INFO logs every pod patch: thousands of lines at scale


def start(kwok: Path, kubeconfig: str, workdir: Path, run: str) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "kwok.yaml"
    config.write_text(STAGES.replace("@BOOTSTRAP_MS@", str(int(BOOTSTRAP_SECONDS * 1000))))
    log = open(workdir / "kwok.log", "ab")
    return subprocess.Popen(command(kwok, kubeconfig, config, run), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


STAGES = r"""
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: node-initialize
spec:
  resourceRef:
    apiGroup: v1
    kind: Node
  selector:
    matchExpressions:
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'NotIn'
      values: ['True']
  next:
    statusTemplate: |
      {{ $now := Now }}
      {{ $lastTransitionTime := or .metadata.creationTimestamp $now }}
      conditions:
      {{ range NodeConditions }}
      - lastHeartbeatTime: {{ $now | Quote }}
        lastTransitionTime: {{ $lastTransitionTime | Quote }}
        message: {{ .message | Quote }}
        reason: {{ .reason | Quote }}
        status: {{ .status | Quote }}
        type: {{ .type  | Quote}}
      {{ end }}
      addresses:
      {{ with NodeIP }}
      - address: {{ . | Quote }}
        type: InternalIP
      {{ end }}
      {{ with NodeName }}
      - address: {{ . | Quote }}
        type: Hostname
      {{ end }}
      allocatable:
      {{ with .status.allocatable }}
      {{ YAML . 1 }}
      {{ else }}
        cpu: 1k
        memory: 1Ti
        pods: 1k
      {{ end }}
      capacity:
      {{ with .status.capacity }}
      {{ YAML . 1 }}
      {{ else }}
        cpu: 1k
        memory: 1Ti
        pods: 1k
      {{ end }}
      {{ $kwokVersion := printf "kwok-%s" Version }}
      nodeInfo:
        architecture: amd64
        bootID: ""
        containerRuntimeVersion: {{ $kwokVersion }}
        kernelVersion: {{ $kwokVersion }}
        kubeProxyVersion: {{ $kwokVersion }}
        kubeletVersion: {{ $kwokVersion }}
        machineID: ""
        operatingSystem: linux
        osImage: ""
        systemUUID: ""
      phase: Running
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-ready
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values: ['Pending']
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'NotIn'
      values: ['True']
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Initialized
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Ready
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: ContainersReady
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: true
        restartCount: 0
        started: true
        state:
          running:
            startedAt: {{ $now | Quote }}
      {{ end }}
      initContainerStatuses:
      {{ range .spec.initContainers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: true
        restartCount: 0
        state:
          terminated:
            exitCode: 0
            finishedAt: {{ $now | Quote }}
            reason: Completed
            startedAt: {{ $now | Quote }}
      {{ end }}
      {{ $hostIPs := NodeIPsWith .spec.nodeName }}
      {{ with $hostIPs }}
      hostIP: {{ index . 0 | Quote }}
      hostIPs:
      {{ range . }}
      - ip: {{ . | Quote }}
      {{ end }}
      {{ end }}
      {{ $podIPs := PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) }}
      {{ with $podIPs }}
      podIP: {{ index . 0 | Quote }}
      podIPs:
      {{ range . }}
      - ip: {{ . | Quote }}
      {{ end }}
      {{ end }}
      phase: Running
      startTime: {{ $now | Quote }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pgop-bootstrap-complete
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchLabels:
      "@COMPONENT_LABEL@": "@COMPONENT_BOOTSTRAP@"
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values: ['Running']
  delay:
    durationMilliseconds: @BOOTSTRAP_MS@
  next:
    statusTemplate: |
      {{ $now := Now }}
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated:
            exitCode: 0
            finishedAt: {{ $now | Quote }}
            reason: Completed
            startedAt: {{ $now | Quote }}
      {{ end }}
      conditions:
      - lastTransitionTime: {{ $now | Quote }}
        status: "False"
        reason: PodCompleted
        type: Ready
      - lastTransitionTime: {{ $now | Quote }}
        status: "False"
        reason: PodCompleted
        type: ContainersReady
      phase: Succeeded
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-delete
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'Exists'
  next:
    delete: true
""".replace("@COMPONENT_LABEL@", LABEL_COMPONENT).replace("@COMPONENT_BOOTSTRAP@", COMPONENT_BOOTSTRAP)
