"""The Kubernetes manifests (k8s/): every overlay renders with `kubectl kustomize`, validates against the
Kubernetes OpenAPI schemas offline (kubernetes-validate, strict), and keeps the promises docs/operations.md
makes: hardened pods, probes on the real health routes, drain timings that fit the processes' own
shutdown, configuration keys that the settings know, and network policies that allow exactly the
architecture's flows."""

import re
import subprocess
from typing import Any

import kubernetes_validate
import pytest

from shared.settings import Settings

from .conftest import OVERLAYS, ROOT, Rendered, tool
from .netpol import External, Pod, allowed

SERVICES = ("ingest", "segment", "campaign", "delivery")
# Oldest and newest Kubernetes versions the manifests are validated against (docs/operations.md).
K8S_VERSIONS = ("1.29.0", "1.37.0")
IMAGE_UID = 10001  # USER in the Dockerfile (checked against it in test_dockerfile.py)

# Who calls whose API (ARCHITECTURE.md data flow; services/*: InternalClient.request(..., "<service>", ...)).
CALLS = {
    "ingest": {"segment", "campaign", "delivery"},  # privacy erasure/export fan-out
    "segment": {"ingest"},  # event feed, profile resolution
    "campaign": {"ingest", "segment", "delivery"},  # events, transitions, profiles, members, sends
    "delivery": {"ingest"},  # engagement events back into the log
}


def _containers(workload: dict[str, Any], *, init: bool = True) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return [*(spec.get("initContainers") or [] if init else []), *spec["containers"]]


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def _tenure_deployments(r: Rendered) -> list[dict[str, Any]]:
    return [d for d in r.of_kind("Deployment")
            if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/part-of") == "tenure"]


def _deployment(r: Rendered, service: str, component: str) -> dict[str, Any]:
    return r.get("Deployment", f"{service}-{component}")


# ---- rendering and schemas -------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_whole_application(rendered: dict[str, Rendered], overlay: str) -> None:
    r = rendered[overlay]
    assert {d["metadata"]["name"] for d in _tenure_deployments(r)} == {
        f"{s}-{c}" for s in SERVICES for c in ("api", "worker")}
    assert {s["metadata"]["name"] for s in r.of_kind("Service")} >= set(SERVICES)
    assert {h["spec"]["scaleTargetRef"]["name"] for h in r.of_kind("HorizontalPodAutoscaler")} == {
        f"{s}-api" for s in SERVICES}
    assert r.get("Job", "tenure-migrate")
    for doc in r.docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "tenure", f"{doc['kind']} {doc['metadata']['name']}"


def test_the_manifest_sources_pass_yamllint() -> None:
    proc = subprocess.run([tool("yamllint"), "--strict", "-c", str(ROOT / ".yamllint.yaml"), str(ROOT / "k8s")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_resource_validates_against_the_kubernetes_schema(
        rendered: dict[str, Rendered], overlay: str, version: str) -> None:
    errors = []
    for doc in rendered[overlay].docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert not errors, "\n".join(errors)


def test_the_schema_validation_rejects_what_it_should(rendered: dict[str, Rendered]) -> None:
    """Guard against a validator that passes everything (a wrong version directory, a silent skip)."""
    broken = {**rendered["prod"].get("Deployment", "ingest-api")}
    broken["spec"] = {**broken["spec"], "replica": 3}  # typo of `replicas`: strict mode must refuse it
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)
    wrong_type = {**rendered["prod"].get("Service", "ingest")}
    wrong_type["spec"] = {**wrong_type["spec"], "ports": [{"port": "eighty"}]}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, K8S_VERSIONS[0], strict=True)


# ---- pods: security, resources, probes, shutdown ----------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_hardened_and_sized(rendered: dict[str, Rendered], overlay: str) -> None:
    for w in rendered[overlay].workloads():
        name = f"{w['kind']}/{w['metadata']['name']}"
        spec = _pod_spec(w)
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True, name
        assert pod_sc["runAsUser"] >= 10000, name
        assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        writable = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v or "persistentVolumeClaim" in v}
        writable |= {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        for c in _containers(w):
            cname = f"{name} container {c['name']}"
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, cname
            assert sc["readOnlyRootFilesystem"] is True, cname
            assert sc["capabilities"]["drop"] == ["ALL"], cname
            assert "add" not in sc["capabilities"], cname
            assert not sc.get("privileged"), cname
            res = c["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]), cname
            assert "memory" in res["limits"], cname
            assert res["limits"]["memory"] == res["requests"]["memory"] or w["metadata"]["name"] == "mailpit", (
                f"{cname}: memory limit = request keeps OOM behaviour predictable")
            image = c["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{cname}: {image}"
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert all(v in writable for v in mounts.values()), cname
        if w["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/part-of") == "tenure":
            assert pod_sc["runAsUser"] == IMAGE_UID, name
            for c in _containers(w):
                assert c["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}], f"{name}: /tmp only"


def _app_routes(service: str) -> set[str]:
    import importlib

    app = importlib.import_module(f"services.{service}.app").create_app(Settings())
    return set(app.openapi()["paths"])


@pytest.mark.parametrize("service", SERVICES)
def test_api_pods_probe_the_health_routes_and_drain_before_stopping(rendered: dict[str, Rendered],
                                                                    service: str) -> None:
    routes = _app_routes(service)
    cli = (ROOT / "services" / "cli.py").read_text()
    match = re.search(r"timeout_graceful_shutdown=(\d+)", cli)
    assert match, "services/cli.py no longer sets uvicorn's timeout_graceful_shutdown: re-check the grace periods"
    uvicorn_drain = int(match.group(1))
    for overlay in OVERLAYS:
        dep = _deployment(rendered[overlay], service, "api")
        spec = _pod_spec(dep)
        (app,) = [c for c in spec["containers"] if c["name"] == "app"]
        assert app["args"][:2] == ["serve", service]
        port = int(app["args"][app["args"].index("--port") + 1])
        assert app["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        assert app["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert app["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert app["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert {"/healthz", "/readyz"} <= routes
        annotations = dep["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(port)
        assert annotations["prometheus.io/path"] == "/metrics"
        sleep = app["lifecycle"]["preStop"]["exec"]["command"]
        assert sleep[0] == "sleep" and 5 <= int(sleep[1]) <= 20
        assert spec["terminationGracePeriodSeconds"] >= int(sleep[1]) + uvicorn_drain + 5, (
            "the grace period must cover the preStop sleep and uvicorn's drain")
        assert "replicas" not in dep["spec"], "the HPA owns an API's replica count"
        assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("service", SERVICES)
def test_worker_pods_probe_their_healthz_and_outlast_the_job_completion_wait(rendered: dict[str, Rendered],
                                                                            service: str) -> None:
    import importlib

    settings_class = importlib.import_module(f"services.{service}.worker").WorkerSettings
    for overlay in OVERLAYS:
        spec = _pod_spec(_deployment(rendered[overlay], service, "worker"))
        (app,) = spec["containers"]
        assert app["args"] == ["worker", service]
        assert app["ports"] == [{"name": "metrics", "containerPort": 9100, "protocol": "TCP"}]
        assert {"name": "TENURE_WORKER_METRICS_PORT", "value": "9100"} in app["env"]
        annotations = _deployment(rendered[overlay], service, "worker")["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == "9100"
        for probe in ("livenessProbe", "readinessProbe"):
            # served from the worker's own thread (shared/worker_health.py): no process started per probe
            assert app[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert settings_class.queue_name == Settings().queue_name(service)  # type: ignore[arg-type]
        # /healthz turns 503 after worker_stale_after_s without a heartbeat; a probe must not restart a worker
        # whose loop is merely slow for less than that
        liveness = app["livenessProbe"]
        assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60
        # arq waits job_completion_wait after SIGTERM, then cancels and runs its shutdown hooks
        assert spec["terminationGracePeriodSeconds"] >= settings_class.job_completion_wait + 10


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_schema_migrations_run_before_any_pod_of_a_release_starts(rendered: dict[str, Rendered],
                                                                  overlay: str) -> None:
    r = rendered[overlay]
    job = r.get("Job", "tenure-migrate")
    (migrate,) = _pod_spec(job)["containers"]
    assert migrate["args"] == ["migrate"]
    assert _pod_spec(job)["restartPolicy"] == "Never"
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "Sync"
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    for dep in _tenure_deployments(r):
        (init,) = _pod_spec(dep)["initContainers"]
        assert init["args"] == ["migrate"], dep["metadata"]["name"]
        assert init["image"] == migrate["image"] == _pod_spec(dep)["containers"][0]["image"]
        assert init["envFrom"] == migrate["envFrom"] == _pod_spec(dep)["containers"][0]["envFrom"]
    assert "advisory" in (ROOT / "shared" / "migrate.py").read_text(), (
        "the init containers rely on `tenure migrate` taking an advisory lock")


def _wave(doc: dict) -> int:
    return int((doc["metadata"].get("annotations") or {}).get("argocd.argoproj.io/sync-wave", "0"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_argo_cd_creates_what_the_migration_job_needs_before_it(rendered: dict[str, Rendered], overlay: str) -> None:
    """Argo CD syncs by wave. As a PreSync hook the Job ran before anything of the sync existed: on a new
    Application its pod could not start (no namespace, no tenure-config, no ServiceAccount; in dev no PostgreSQL).
    Everything it refers to that the overlay renders comes in an earlier wave, and the Deployments after it."""
    r = rendered[overlay]
    job = r.get("Job", "tenure-migrate")
    spec = _pod_spec(job)
    needs = [("Namespace", d["metadata"]["name"]) for d in r.of_kind("Namespace")]
    needs.append(("ServiceAccount", spec["serviceAccountName"]))
    for source in spec["containers"][0]["envFrom"]:
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in source and any(d["metadata"]["name"] == source[key]["name"] for d in r.of_kind(kind)):
                needs.append((kind, source[key]["name"]))
    # the dev overlay's in-cluster datastores (the prod one points at managed services)
    needs += [(d["kind"], d["metadata"]["name"]) for d in r.workloads() + r.of_kind("Service")
              if d["metadata"]["name"] in ("postgres", "redis")]
    assert ("ConfigMap" in dict(needs)) and (overlay != "dev" or ("StatefulSet", "postgres") in needs), needs
    for kind, name in needs:
        assert _wave(r.get(kind, name)) < _wave(job), f"{kind} {name} is not created before the migration Job"
    for dep in _tenure_deployments(r):
        assert _wave(dep) > _wave(job), dep["metadata"]["name"]


# ---- configuration and secrets ------------------------------------------------------------------------------

def _known_env() -> set[str]:
    return {f"TENURE_{name.upper()}" for name in Settings.model_fields}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configuration_keys_are_settings_and_references_resolve(rendered: dict[str, Rendered], overlay: str) -> None:
    r = rendered[overlay]
    known = _known_env()
    (config,) = [c for c in r.of_kind("ConfigMap") if c["metadata"]["name"].startswith("tenure-config-")]
    assert set(config["data"]) <= known, set(config["data"]) - known
    config_values = config["data"]
    assert config_values["TENURE_ENV"] == "prod"  # refuses placeholder secrets, logs JSON
    for s in SERVICES:
        assert config_values[f"TENURE_{s.upper()}_URL"] == f"http://{s}"
        assert r.get("Service", s)["spec"]["ports"][0]["port"] == 80
    secrets = {s["metadata"]["name"]: s for s in r.of_kind("Secret")}
    for w in r.workloads():
        for c in _containers(w):
            for ref in c.get("envFrom", []):
                if "configMapRef" in ref:
                    assert ref["configMapRef"]["name"] == config["metadata"]["name"]
                if "secretRef" in ref and ref["secretRef"]["name"] == "tenure-core":
                    assert not ref["secretRef"].get("optional")
            for env in c.get("env", []):
                if env["name"].startswith("TENURE_"):
                    assert env["name"] in known, env["name"]
                key_ref = env.get("valueFrom", {}).get("secretKeyRef")
                if key_ref and key_ref["name"] == "tenure-providers":
                    assert key_ref["optional"] is True and key_ref["key"] == env["name"]
    core = [k for k in secrets if k.startswith("tenure-core")]
    if overlay == "prod":
        assert not secrets, "prod commits no Secret: tenure-core comes from the operator's secret store"
    else:
        (name,) = core
        keys = set(secrets[name]["data"])
        assert keys == {"TENURE_DATABASE_URL", "TENURE_REDIS_URL", "TENURE_INTERNAL_TOKEN", "TENURE_SIGNING_SECRET",
                        "TENURE_SIGNING_SECRET_PREVIOUS"}  # (empty: no rotation under way)
        for dep in _tenure_deployments(r):  # the generated (hash-suffixed) name reaches every pod
            assert {"secretRef": {"name": name}} in _pod_spec(dep)["containers"][0]["envFrom"]


def test_provider_credentials_reach_delivery_only(rendered: dict[str, Rendered]) -> None:
    for dep in _tenure_deployments(rendered["prod"]):
        env = {e["name"] for e in _pod_spec(dep)["containers"][0].get("env", []) if "valueFrom" in e}
        if dep["metadata"]["labels"]["app.kubernetes.io/name"] == "delivery":
            assert {"TENURE_SENDGRID_API_KEY", "TENURE_TWILIO_AUTH_TOKEN", "TENURE_SMTP_PASSWORD",
                    "TENURE_FCM_SERVICE_ACCOUNT"} <= env
        else:
            assert not env, dep["metadata"]["name"]


# ---- scaling and availability ------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_budgets_and_autoscalers_select_real_pods(rendered: dict[str, Rendered], overlay: str) -> None:
    r = rendered[overlay]
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in r.of_kind("Deployment")}
    pods |= {s["metadata"]["name"]: s["spec"]["template"]["metadata"]["labels"] for s in r.of_kind("StatefulSet")}

    def selected(selector: dict[str, str]) -> list[str]:
        return [n for n, labels in pods.items() if all(labels.get(k) == v for k, v in selector.items())]

    for svc in r.of_kind("Service"):
        assert len(selected(svc["spec"]["selector"])) == 1, svc["metadata"]["name"]
    for s in SERVICES:
        assert selected(r.get("Service", s)["spec"]["selector"]) == [f"{s}-api"]
        assert r.get("Service", s)["spec"]["ports"][0]["targetPort"] == "http"
    for pdb in r.of_kind("PodDisruptionBudget"):
        targets = selected(pdb["spec"]["selector"]["matchLabels"])
        assert targets == [pdb["metadata"]["name"]]
        assert pdb["spec"]["maxUnavailable"] == 1, "maxUnavailable: 0 would block node drains"
        assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    for hpa in r.of_kind("HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]["name"]
        assert target in pods and pods[target]["app.kubernetes.io/component"] == "api"
        assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"  # needs CPU requests, which every container has


def test_prod_runs_more_replicas_spread_over_zones(rendered: dict[str, Rendered]) -> None:
    dev, prod = rendered["dev"], rendered["prod"]
    for s in SERVICES:
        dev_hpa, prod_hpa = dev.get("HorizontalPodAutoscaler", f"{s}-api"), prod.get("HorizontalPodAutoscaler", f"{s}-api")
        assert prod_hpa["spec"]["minReplicas"] >= 3 > dev_hpa["spec"]["minReplicas"]
        assert prod_hpa["spec"]["maxReplicas"] > dev_hpa["spec"]["maxReplicas"]
        assert _deployment(dev, s, "worker")["spec"]["replicas"] == 1
        assert _deployment(prod, s, "worker")["spec"]["replicas"] >= 3
    for dep in _tenure_deployments(prod):
        spread = {c["topologyKey"]: c for c in _pod_spec(dep)["topologySpreadConstraints"]}
        assert spread["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "DoNotSchedule"
        assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "ScheduleAnyway"
        for c in spread.values():
            assert c["matchLabelKeys"] == ["pod-template-hash"], "spread each ReplicaSet on its own"
    for dep in _tenure_deployments(dev):
        assert "topologySpreadConstraints" not in _pod_spec(dep)
    assert Settings().segment_partitions >= _deployment(prod, "segment", "worker")["spec"]["replicas"], (
        "segment worker replicas beyond TENURE_SEGMENT_PARTITIONS would idle")


def test_dev_runs_its_own_datastores_and_prod_none(rendered: dict[str, Rendered]) -> None:
    dev, prod = rendered["dev"], rendered["prod"]
    assert dev.get("StatefulSet", "postgres")["spec"]["replicas"] == 1
    assert dev.get("Deployment", "redis")["spec"]["replicas"] == 1
    assert "--save" in dev.get("Deployment", "redis")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not prod.of_kind("StatefulSet")
    assert {d["metadata"]["name"] for d in prod.of_kind("Deployment")} == {
        f"{s}-{c}" for s in SERVICES for c in ("api", "worker")}


def test_the_public_ingress_routes_exactly_deliverys_public_pages(rendered: dict[str, Rendered]) -> None:
    """links.example.com exposes delivery's recipient-facing routes and provider webhooks, not its API."""
    prod = rendered["prod"]
    public = prod.get("Ingress", "tenure-public")
    (links,) = [rule for rule in public["spec"]["rules"] if rule["host"].startswith("links.")]
    prefixes = {p["path"] for p in links["http"]["paths"]}
    assert all(p["backend"]["service"]["name"] == "delivery" for p in links["http"]["paths"])
    public_routes = {p for p in _app_routes("delivery")
                     if not p.startswith("/v1/") and p not in ("/healthz", "/readyz", "/metrics")}
    assert {"/u/{token}", "/webhooks/sendgrid/{workspace_id}/events"} <= public_routes
    for route in public_routes:
        assert any(route.startswith(p) for p in prefixes), f"{route} is not reachable from the internet"
    assert not any(p.startswith("/v1") for p in prefixes)
    config = next(c for c in prod.of_kind("ConfigMap") if c["metadata"]["name"].startswith("tenure-config-"))
    assert config["data"]["TENURE_DELIVERY_PUBLIC_URL"] == f"https://{links['host']}"
    (track,) = [rule for rule in public["spec"]["rules"] if rule["host"].startswith("track.")]
    assert config["data"]["TENURE_INGEST_PUBLIC_URL"] == f"https://{track['host']}"
    services = {s["metadata"]["name"] for s in prod.of_kind("Service")}
    for ingress in prod.of_kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["name"] in services
                assert path["backend"]["service"]["port"] == {"name": "http"}
                # what Prometheus and the kubelet read stays inside the cluster
                for internal in ("/metrics", "/healthz", "/readyz"):
                    assert not internal.startswith(path["path"]), (rule["host"], path["path"])


# ---- network policies ---------------------------------------------------------------------------------------

def _pod(service: str, component: str) -> Pod:
    return Pod("tenure", {"app.kubernetes.io/name": service, "app.kubernetes.io/component": component,
                          "app.kubernetes.io/part-of": "tenure"})


MIGRATION = Pod("tenure", {"app.kubernetes.io/name": "tenure", "app.kubernetes.io/component": "migration",
                           "app.kubernetes.io/part-of": "tenure"})
INGRESS_CONTROLLER = Pod("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
PROMETHEUS = Pod("monitoring", {"app.kubernetes.io/name": "prometheus"})
STRANGER = Pod("default", {"app": "anything"})
KUBE_DNS = Pod("kube-system", {"k8s-app": "kube-dns"})
INTERNET = External("203.0.113.10")
INTERNET6 = External("2001:db8::10")
MANAGED_DB = External("10.20.0.5")  # a managed PostgreSQL/Redis on a private address
METADATA = External("169.254.169.254")


def _tenure_pods() -> list[Pod]:
    return [*(_pod(s, c) for s in SERVICES for c in ("api", "worker")), MIGRATION]


def _policies(r: Rendered) -> list[dict[str, Any]]:
    return r.of_kind("NetworkPolicy")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_reach_exactly_the_apis_the_architecture_names(rendered: dict[str, Rendered], overlay: str) -> None:
    pol = _policies(rendered[overlay])
    for caller in SERVICES:
        for component in ("api", "worker"):
            src = _pod(caller, component)
            for callee in SERVICES:
                expected = callee in CALLS[caller]
                assert allowed(pol, src, _pod(callee, "api"), 8000) is expected, f"{caller}-{component} -> {callee}"
                assert not allowed(pol, src, _pod(callee, "api"), 5432), "only the API port"
                assert not allowed(pol, src, _pod(callee, "worker"), 8000), "workers take no connections"
    for s in SERVICES:
        assert not allowed(pol, MIGRATION, _pod(s, "api"), 8000)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_ingress_controller_and_prometheus_come_from_outside(rendered: dict[str, Rendered],
                                                                      overlay: str) -> None:
    pol = _policies(rendered[overlay])
    for s in SERVICES:
        assert allowed(pol, INGRESS_CONTROLLER, _pod(s, "api"), 8000)
        assert allowed(pol, PROMETHEUS, _pod(s, "api"), 8000)
        assert not allowed(pol, STRANGER, _pod(s, "api"), 8000)
        assert not allowed(pol, INGRESS_CONTROLLER, _pod(s, "worker"), 8000)
        assert allowed(pol, PROMETHEUS, _pod(s, "worker"), 9100)
        assert not allowed(pol, STRANGER, _pod(s, "worker"), 9100)
        assert not allowed(pol, INGRESS_CONTROLLER, _pod(s, "worker"), 9100)
        assert not allowed(pol, INTERNET, _pod(s, "api"), 8000)
    assert not allowed(pol, INGRESS_CONTROLLER, MIGRATION, 8000)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_resolves_names_and_reaches_its_datastores(rendered: dict[str, Rendered], overlay: str) -> None:
    r = rendered[overlay]
    pol = _policies(r)
    postgres = Pod("tenure", {"app.kubernetes.io/name": "postgres", "app.kubernetes.io/part-of": "tenure-dev"})
    redis = Pod("tenure", {"app.kubernetes.io/name": "redis", "app.kubernetes.io/part-of": "tenure-dev"})
    for pod in _tenure_pods():
        assert allowed(pol, pod, KUBE_DNS, 53, "UDP") and allowed(pol, pod, KUBE_DNS, 53, "TCP")
        assert not allowed(pol, pod, KUBE_DNS, 80)
        if overlay == "dev":  # in-cluster datastores, and only those
            assert allowed(pol, pod, postgres, 5432) and allowed(pol, pod, redis, 6379)
            assert not allowed(pol, pod, MANAGED_DB, 5432)
        else:  # managed datastores at addresses the operator narrows (docs/operations.md)
            assert allowed(pol, pod, MANAGED_DB, 5432) and allowed(pol, pod, MANAGED_DB, 6379)
        assert not allowed(pol, pod, MANAGED_DB, 22)
    if overlay == "dev":
        assert not allowed(pol, STRANGER, postgres, 5432)
        assert not allowed(pol, _pod("delivery", "worker"), redis, 5432)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_delivery_reaches_the_internet_and_never_private_or_metadata_addresses(
        rendered: dict[str, Rendered], overlay: str) -> None:
    pol = _policies(rendered[overlay])
    for pod in _tenure_pods():
        is_delivery = pod.labels["app.kubernetes.io/name"] == "delivery"
        for port in (443, 587, 465, 25, 80):
            assert allowed(pol, pod, INTERNET, port) is is_delivery, (pod.labels, port)
            assert allowed(pol, pod, INTERNET6, port) is is_delivery, (pod.labels, port)
        assert not allowed(pol, pod, INTERNET, 8080)
        assert not allowed(pol, pod, METADATA, 80)
        assert not allowed(pol, pod, External("10.1.2.3"), 443)
    if overlay == "dev":
        mailpit = Pod("tenure", {"app.kubernetes.io/name": "mailpit", "app.kubernetes.io/part-of": "tenure-dev"})
        assert allowed(pol, _pod("delivery", "worker"), mailpit, 1025)
        assert not allowed(pol, _pod("ingest", "worker"), mailpit, 1025)


def test_the_flow_table_matches_the_services_calls() -> None:
    """Every literal InternalClient call in a service's code targets a service CALLS allows it to reach,
    so a new call cannot ship without its network policy."""
    pattern = re.compile(r"internal\.request\(\s*\"[A-Z]+\",\s*\"(ingest|segment|campaign|delivery)\"")
    found: dict[str, set[str]] = {s: set() for s in SERVICES}
    shared_callers = {"event_outbox": "ingest"}  # shared modules that call a service on their caller's behalf
    for s in SERVICES:
        for path in (ROOT / "services" / s).rglob("*.py"):
            code = path.read_text()
            found[s] |= set(pattern.findall(code))
            found[s] |= {target for module, target in shared_callers.items() if f"{module}.forward(" in code}
    outbox = (ROOT / "shared" / "event_outbox.py").read_text()
    assert set(pattern.findall(outbox)) == {"ingest"}, "shared.event_outbox calls something new"
    assert found["campaign"] and found["segment"] and found["delivery"], "the pattern no longer finds the calls"
    for s in SERVICES:
        assert found[s] <= CALLS[s], f"{s} calls {found[s] - CALLS[s]} but no network policy allows it"
        assert s not in found[s]
    # the calls made through a variable: ingest's privacy fan-out and campaign's feeds
    privacy = (ROOT / "services" / "ingest" / "privacy.py").read_text()
    assert 'OTHER_SERVICES = ("segment", "campaign", "delivery")' in privacy
    triggering = (ROOT / "services" / "campaign" / "triggering.py").read_text()
    assert '("ingest", "/v1/events"' in triggering and '("segment", "/v1/transitions"' in triggering


def test_the_network_policy_model_isolates_as_kubernetes_does() -> None:
    """The evaluator above decides the flow tests: check it on the cases that matter."""
    deny_all = {"metadata": {"name": "d", "namespace": "tenure"},
                "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}
    a, b = _pod("ingest", "api"), _pod("segment", "api")
    assert allowed([], a, b, 8000), "no policy: open"
    assert not allowed([deny_all], a, b, 8000)
    ingress_only = {"metadata": {"name": "i", "namespace": "tenure"},
                    "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "segment"}},
                             "policyTypes": ["Ingress"],
                             "ingress": [{"from": [{"podSelector": {"matchExpressions": [
                                 {"key": "app.kubernetes.io/name", "operator": "In", "values": ["ingest"]}]}}],
                                 "ports": [{"protocol": "TCP", "port": 8000}]}]}}
    assert allowed([ingress_only], a, b, 8000)
    assert not allowed([ingress_only], a, b, 8001)
    assert not allowed([ingress_only], _pod("campaign", "api"), b, 8000)
    assert not allowed([ingress_only], Pod("other", a.labels), b, 8000), "podSelector alone is same-namespace"
    block = {"metadata": {"name": "e", "namespace": "tenure"},
             "spec": {"podSelector": {}, "policyTypes": ["Egress"],
                      "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]}]}}
    assert allowed([block], a, INTERNET, 443)
    assert not allowed([block], a, External("10.9.9.9"), 443)
    assert not allowed([block], a, INTERNET6, 443)
    assert not allowed([block], a, b, 8000), "ipBlock does not match pods"


def test_what_the_manifests_take_from_secrets_is_what_the_docs_call_secret(rendered: dict[str, Rendered]) -> None:
    from tests.unit.test_configuration_doc import table

    documented = {name for name, cells in table().items() if cells[1] == "yes"}
    dev = rendered["dev"]
    (core,) = [s for s in dev.of_kind("Secret") if s["metadata"]["name"].startswith("tenure-core")]
    from_secrets = set(core["data"])
    for dep in _tenure_deployments(rendered["prod"]):
        for env in _pod_spec(dep)["containers"][0].get("env", []):
            if "secretKeyRef" in env.get("valueFrom", {}):
                from_secrets.add(env["name"])
    assert from_secrets == documented, (from_secrets ^ documented)
    config = next(c for c in dev.of_kind("ConfigMap") if c["metadata"]["name"].startswith("tenure-config-"))
    assert not set(config["data"]) & documented, "a secret setting in the ConfigMap"


def test_each_ingress_lets_through_the_bodies_its_services_take(rendered: dict[str, Rendered]) -> None:
    """nginx refuses bodies over 1m by default, with a 413 of its own: the management APIs take up to
    TENURE_MAX_BODY_BYTES (delivery's message batches, segment's list uploads), the tracking API Segment's 500 KB."""
    from shared.settings import Settings

    def size(ingress: dict[str, Any]) -> int:
        value = ingress["metadata"].get("annotations", {}).get("nginx.ingress.kubernetes.io/proxy-body-size", "1m")
        return int(value[:-1]) * {"k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}[value[-1].lower()]

    defaults = Settings()
    assert size(rendered["prod"].get("Ingress", "tenure-api")) >= defaults.max_body_bytes
    assert size(rendered["prod"].get("Ingress", "tenure-public")) >= defaults.ingest_max_batch_bytes
