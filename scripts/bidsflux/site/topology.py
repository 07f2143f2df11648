"""Checks of the site's physical layout: which node carries which role (`nodes`), the address
workers join, and MinIO's drives. Each problem points at the key in site.yml."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from bidsflux.diagnostics import Diagnostic
from bidsflux.site.yamlsource import Document

# MinIO's erasure set sizes (minio/minio cmd/endpoint-ellipses.go, `var setSizes = []uint64{2, 3, ...,
# 16}`; 2- and 3-drive sets exist since late 2022, see minio/minio#16268 on RELEASE.2022-12-12).
MINIO_SET_SIZES = range(2, 17)


def minio_drive_problem(count: int) -> str | None:
    """Why `minio server` refuses `count` drives given as separate arguments, or None.

    MinIO's GetAllSets (cmd/endpoint-ellipses.go): one argument is a single-drive setup; more
    arguments without ellipses go through getSetIndexes(args, [len(args)]), which fails with
    "Incorrect number of endpoints provided ..., number of drives N is not divisible by any
    supported erasure set sizes [2 ... 16]" unless some set size divides the count."""
    if count == 1:
        return None
    if any(count % size == 0 for size in MINIO_SET_SIZES):
        return None
    return (f"MinIO cannot use {count} drives: a count above 1 must split into erasure sets of 2 to 16 drives "
            f"(minio server: \"number of drives {count} is not divisible by any supported erasure set sizes\"); "
            f"use 1, or e.g. {_nearest_valid(count)} drives")


def _nearest_valid(count: int) -> str:
    lower = next(n for n in range(count - 1, 0, -1) if minio_drive_problem(n) is None)
    upper = next(n for n in range(count + 1, count + 17) if minio_drive_problem(n) is None)
    return f"{lower} or {upper}"


def unroutable_reason(address: str) -> str | None:
    """Why other servers cannot reach `address`, or None (also None for an interface name,
    which only the host itself can resolve)."""
    host = address
    if address.startswith("["):  # [ipv6]:port
        host = address[1:].partition("]")[0]
    elif address.count(":") == 1:  # ipv4:port or interface:port
        host = address.split(":")[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.is_loopback:
        return "a loopback address: each server would reach itself, not the manager"
    if ip.is_unspecified:
        return "the unspecified address: it names no host"
    if ip.is_multicast:
        return "a multicast address, not a host"
    if ip.is_link_local:
        return "a link-local address: routers do not forward it (RFC 3927) and Docker does not pick it"
    if ip.is_reserved or (ip.version == 4 and ip == ipaddress.ip_address("255.255.255.255")):
        return "a reserved address, not a host"
    return None


def check_topology(site: Document, bind_roles: Mapping[str, list[str]], out: list[Diagnostic]) -> None:
    """`bind_roles`: role -> services of that role that keep data in host folders under paths.*."""
    data: dict[str, Any] = site.data
    nodes: dict[str, Any] = data.get("nodes") or {}
    roles: dict[str, list[str]] = data["roles"]
    if nodes:
        for role, services in roles.items():
            carriers = [host for host, spec in nodes.items() if role in (spec.get("roles") or [])]
            if services and not carriers:
                out.append(site.diagnostic(["nodes"], f"no node carries role {role}, so {', '.join(services)} would never "
                                                      f"start; add {role} to the roles of one node"))
            if len(carriers) > 1 and bind_roles.get(role):
                out.append(site.diagnostic(
                    ["nodes", carriers[1], "roles"],
                    f"role {role} is on {len(carriers)} nodes ({', '.join(carriers)}), but "
                    f"{', '.join(bind_roles[role])} keep data in host folders (paths.*): they must always run on the "
                    "same node, so give this role to one node only"))
        if len(nodes) > 1:
            addr = str(data["swarm"]["advertise_addr"])
            reason = unroutable_reason(addr)
            if reason:
                out.append(site.diagnostic(
                    ["swarm", "advertise_addr"],
                    f"{addr} is {reason}; with {len(nodes)} nodes workers join at this address, so set the data "
                    "server's address that the other servers reach (or its interface name, e.g. eth0)"))

    disks = data["paths"]["minio_disks"]
    problem = minio_drive_problem(len(disks))
    if problem:
        out.append(site.diagnostic(["paths", "minio_disks"], problem))
    seen: dict[PurePosixPath, int] = {}
    for i, disk in enumerate(disks):
        path = PurePosixPath(disk["path"])
        for other, j in seen.items():
            if path == other:
                out.append(site.diagnostic(["paths", "minio_disks", i, "path"],
                                           f"{path} is already minio_disks[{j}]: each drive must be its own folder"))
            elif other in path.parents or path in other.parents:
                out.append(site.diagnostic(["paths", "minio_disks", i, "path"],
                                           f"{path} and minio_disks[{j}] ({other}) are nested: MinIO would find one "
                                           "drive's data inside another"))
        seen[path] = i
