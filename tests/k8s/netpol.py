"""A small evaluator of Kubernetes NetworkPolicy semantics, enough to check that the manifests allow the
architecture's flows and nothing else: pod/namespace selectors (matchLabels, matchExpressions), ipBlock
with except, ports, policyTypes, and "a pod selected by no policy of a direction is open in it".
Endpoints are pods (namespace + labels) or external IP addresses."""

import ipaddress
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict[str, str] = field(hash=False)
    namespace_labels: dict[str, str] = field(default_factory=dict, hash=False)

    def ns_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace, **self.namespace_labels}


@dataclass(frozen=True)
class External:
    ip: str


Endpoint = Pod | External


def selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return True
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _peer_matches(peer: dict[str, Any], policy_ns: str, ep: Endpoint) -> bool:
    if "ipBlock" in peer:
        if not isinstance(ep, External):
            return False
        addr = ipaddress.ip_address(ep.ip)
        block = peer["ipBlock"]
        net = ipaddress.ip_network(block["cidr"])
        if addr.version != net.version or addr not in net:
            return False
        return not any(addr.version == ipaddress.ip_network(e).version and addr in ipaddress.ip_network(e)
                       for e in block.get("except") or [])
    if not isinstance(ep, Pod):
        return False
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], ep.ns_labels()):
            return False
    elif ep.namespace != policy_ns:
        return False
    return selector_matches(peer.get("podSelector"), ep.labels)


def _ports_match(ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    return any(p.get("protocol", "TCP") == protocol and ("port" not in p or p["port"] == port) for p in ports)


def _direction_allows(policies: list[dict[str, Any]], pod: Pod, peer: Endpoint, port: int, protocol: str,
                      direction: str) -> bool:
    """Do the policies selecting ``pod`` let ``peer`` in (Ingress) or let ``pod`` reach ``peer`` (Egress)?"""
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [p for p in policies
                 if p["metadata"].get("namespace", pod.namespace) == pod.namespace
                 and direction in p["spec"].get("policyTypes", ["Ingress"])
                 and selector_matches(p["spec"]["podSelector"], pod.labels)]
    if not selecting:
        return True  # a pod is isolated in a direction only once some policy of that direction selects it
    for policy in selecting:
        ns = policy["metadata"].get("namespace", pod.namespace)
        for rule in policy["spec"].get(rules_key) or []:
            if not _ports_match(rule.get("ports"), port, protocol):
                continue
            peers = rule.get(peers_key)
            if not peers or any(_peer_matches(p, ns, peer) for p in peers):
                return True
    return False


def allowed(policies: list[dict[str, Any]], src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP",
            namespace: str = "tenure") -> bool:
    """Would a connection from ``src`` to ``dst:port`` get through the policies of ``namespace``?
    Policies of other namespaces are not modelled: peers outside ``namespace`` are open on their side."""
    if isinstance(src, Pod) and src.namespace == namespace:
        if not _direction_allows(policies, src, dst, port, protocol, "Egress"):
            return False
    if isinstance(dst, Pod) and dst.namespace == namespace:
        if not _direction_allows(policies, dst, src, port, protocol, "Ingress"):
            return False
    return True
