"""deploy/k8s: every manifest parses, has its required fields, and fits the others together.

No cluster here: the checks are structural (kinds, names, selectors, references) plus the
m3pipe commands in containers and probes, parsed by the real CLI.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.cli.main import build_parser

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict]:
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            for field in ("apiVersion", "kind", "metadata"):
                assert field in doc, f"{path.name}: no {field}"
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = doc
    return found


def containers(obj: dict) -> list[dict]:
    return obj["spec"]["template"]["spec"]["containers"]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_kustomization_lists_every_manifest():
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk


def test_workloads_select_their_pods_and_commands_parse(objects):
    parser = build_parser()
    for (kind, name), obj in objects.items():
        if kind not in ("Deployment", "StatefulSet"):
            continue
        selector = obj["spec"]["selector"]["matchLabels"]
        labels = obj["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), name
        for container in containers(obj):
            command = container.get("args", [])
            if command[:1] == ["m3pipe"]:
                assert callable(parser.parse_args(command[1:]).func), name
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                exec_command = container.get(probe, {}).get("exec", {}).get("command", [])
                if exec_command[:1] == ["m3pipe"]:
                    parser.parse_args(exec_command[1:])
            for var in env_of(container).values():
                secret = var.get("valueFrom", {}).get("secretKeyRef")
                if secret:
                    assert secret["name"] == "m3pipe", name  # one secret, documented keys
                    assert secret["key"] in {
                        "broker-url", "redis-password", "flower-basic-auth"
                    }  # fmt: skip


def test_worker_has_one_gpu_a_long_grace_and_a_probe_beyond_ping(objects):
    worker = objects[("Deployment", "m3pipe-worker")]
    spec = worker["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = env_of(container)
    visibility = int(env["M3PIPE_VISIBILITY_TIMEOUT"]["value"])
    # Longer than the longest shard (cut to half the visibility timeout).
    assert spec["terminationGracePeriodSeconds"] > visibility / 2
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"][:2] == ["m3pipe", "probe"]
    assert env["M3PIPE_WORKER_NAME"]["value"] == "gpu0@$(POD_NAME)"  # the probe's --name
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert env["M3PIPE_OUTPUT_ROOTS"]["value"] == mounts["data"]  # writes confined to /data
    assert env["M3PIPE_INPUT_ROOTS"]["value"] == mounts["data"]  # and reads by reference
    assert env["PYTORCH_CUDA_ALLOC_CONF"]["value"] == "expandable_segments:True"
    assert "$(M3PIPE_WORKER_NAME)" in container["args"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    claim = volumes["data"]["persistentVolumeClaim"]["claimName"]
    pvc = objects[("PersistentVolumeClaim", claim)]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    # Object-store keys come from a secret the pod starts without (pod roles need none).
    [store_secret] = container["envFrom"]
    assert store_secret["secretRef"] == {"name": "m3pipe-object-store", "optional": True}


def test_workers_load_the_models_from_a_cache_the_fetch_job_fills(objects):
    worker = objects[("Deployment", "m3pipe-worker")]["spec"]["template"]["spec"]
    [container] = worker["containers"]
    env = env_of(container)
    assert env["HF_HUB_OFFLINE"]["value"] == "1"  # never a download on scale-up
    cache = {v["name"]: v for v in worker["volumes"]}["cache"]["persistentVolumeClaim"]
    assert cache["readOnly"] is True
    mount = next(m for m in container["volumeMounts"] if m["name"] == "cache")
    assert mount["readOnly"] is True
    pvc = objects[("PersistentVolumeClaim", cache["claimName"])]
    assert "ReadOnlyMany" in pvc["spec"]["accessModes"]

    job = objects[("Job", "m3pipe-fetch-model")]["spec"]["template"]["spec"]
    [fetch] = job["containers"]
    args = build_parser().parse_args(fetch["args"][1:])
    assert fetch["args"][:2] == ["m3pipe", "fetch-model"] and args.timeout >= 1800
    assert fetch["image"] == container["image"]  # the same HF_HOME and cache layout
    job_cache = {v["name"]: v for v in job["volumes"]}["cache"]["persistentVolumeClaim"]
    assert job_cache["claimName"] == cache["claimName"] and not job_cache.get("readOnly")
    job_mount = next(m for m in fetch["volumeMounts"] if m["name"] == "cache")
    assert job_mount["mountPath"] == mount["mountPath"]
    for model in ("M3PIPE_MODEL", "M3PIPE_RERANK_MODEL"):  # the models the workers load
        assert env_of(fetch)[model]["value"] == env[model]["value"]


def test_keda_scales_the_worker_on_backlog_including_in_flight(objects):
    scaled = objects[("ScaledObject", "m3pipe-worker")]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert ("Deployment", scaled["spec"]["scaleTargetRef"]["name"]) in objects
    assert scaled["spec"]["minReplicaCount"] == 0
    triggers = {t["type"]: t for t in scaled["spec"]["triggers"]}
    api = triggers["metrics-api"]["metadata"]
    assert api["valueLocation"] == "total"  # queued + in flight, see pipeline/backlog_server
    service = objects[("Service", "m3pipe-backlog")]
    host_port = api["url"].split("//")[1].split("/")[0]
    assert host_port == f"m3pipe-backlog.m3pipe.svc:{service['spec']['ports'][0]['port']}"
    backlog = objects[("Deployment", "m3pipe-backlog")]
    assert containers(backlog)[0]["args"][:6] == [
        "m3pipe",
        "backlog",
        "--serve",
        "9391",
        "--address",
        "0.0.0.0",
    ]
    redis_trigger = triggers["redis"]
    assert redis_trigger["metadata"]["listName"] == "m3pipe"
    auth = redis_trigger["authenticationRef"]["name"]
    assert ("TriggerAuthentication", auth) in objects


def test_redis_persists_and_flower_is_internal(objects):
    redis = objects[("StatefulSet", "redis")]
    args = " ".join(containers(redis)[0]["args"])
    for setting in ("--appendonly yes", "--maxmemory-policy noeviction", "requirepass"):
        assert setting in args
    assert "--requirepass" not in args  # a config file on a memory volume, not argv
    probe = " ".join(containers(redis)[0]["readinessProbe"]["exec"]["command"])
    assert "REDISCLI_AUTH" in probe and " -a " not in probe
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    flower = objects[("Service", "m3pipe-flower")]
    assert flower["spec"]["type"] == "ClusterIP"
    flower_env = env_of(containers(objects[("Deployment", "m3pipe-flower")])[0])
    assert "M3PIPE_FLOWER_BASIC_AUTH" in flower_env


POD_KINDS = ("Deployment", "StatefulSet", "Job")


def test_every_pod_runs_unprivileged_on_a_read_only_root(objects):
    pods = [obj for (kind, _), obj in objects.items() if kind in POD_KINDS]
    assert len(pods) == 5
    for pod in pods:
        spec = pod["spec"]["template"]["spec"]
        name = pod["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            # Whatever it writes has a volume: /tmp for m3pipe, the auth file for Redis.
            mounts = {mount["mountPath"] for mount in container.get("volumeMounts", [])}
            assert "/tmp" in mounts or "/run/redis-auth" in mounts, name


def test_only_m3pipe_pods_reach_redis(objects):
    policy = objects[("NetworkPolicy", "redis")]
    assert policy["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "redis"}}
    [rule] = policy["spec"]["ingress"]
    assert rule["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "m3pipe"}}}
    ]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    for (kind, name), obj in objects.items():
        if kind in POD_KINDS:  # every m3pipe pod carries the label the policy admits
            labels = obj["spec"]["template"]["metadata"]["labels"]
            assert labels["app.kubernetes.io/part-of"] == "m3pipe", name
