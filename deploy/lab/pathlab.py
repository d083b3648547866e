"""A routed path of four namespaces for path measurements: client -- r1 == r2 -- server.

The middle link (r1 ``v1`` -- r2 ``v0``) plays the site-to-site interconnect: lower its MTU,
drop the routers' ICMP fragmentation-needed, shape it (:mod:`deploy.lab.linkshape`).
Addresses from 198.18.0.0/15; the namespaces are named ``<prefix>c``, ``r1``, ``r2``, ``s``
and removed by :meth:`PathLab.close` (also after a failed build). Root only.
"""

from __future__ import annotations

from deploy.lab.netns import delete_namespaces, run

CLIENT = "198.18.1.2"
R1_LEFT, R1_RIGHT = "198.18.1.1", "198.18.2.1"
R2_LEFT, R2_RIGHT = "198.18.2.2", "198.18.3.1"
SERVER = "198.18.3.2"
# The interconnect's two ends: (namespace key, device).
INTERCONNECT = (("r1", "v1"), ("r2", "v0"))


class PathLab:
    """With `icmp_ratelimit`, the routers keep the kernel's ICMP rate limiting
    (net.ipv4.icmp_ratelimit, icmp_msgs_per_sec: the namespace's defaults); without, they
    answer every packet (a lab traceroute of many ports needs every ICMP error)."""

    def __init__(self, prefix: str, icmp_ratelimit: bool = False) -> None:
        self.ns = {k: f"{prefix}{k}" for k in ("c", "r1", "r2", "s")}
        self.icmp_ratelimit = icmp_ratelimit

    def __enter__(self) -> PathLab:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build(self) -> None:
        delete_namespaces(list(self.ns.values()))
        for ns in self.ns.values():
            run(["ip", "netns", "add", ns])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        c, r1, r2, s = (self.ns[k] for k in ("c", "r1", "r2", "s"))
        links = [(c, "v0", CLIENT, r1, "v0", R1_LEFT), (r1, "v1", R1_RIGHT, r2, "v0", R2_LEFT)]
        links.append((r2, "v1", R2_RIGHT, s, "v0", SERVER))
        for a, a_if, a_ip, b, b_if, b_ip in links:
            run(["ip", "-n", a, "link", "add", a_if, "type", "veth", "peer", "name", b_if,
                 "netns", b])  # fmt: skip
            for ns, ifname, ip in ((a, a_if, a_ip), (b, b_if, b_ip)):
                run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", ifname])
                run(["ip", "-n", ns, "link", "set", ifname, "up"])
        for router in (r1, r2):
            run(["ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
            if not self.icmp_ratelimit:
                run(["ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"])
        run(["ip", "-n", c, "route", "add", "default", "via", R1_LEFT])
        run(["ip", "-n", r1, "route", "add", "198.18.3.0/24", "via", R2_LEFT])
        run(["ip", "-n", r2, "route", "add", "198.18.1.0/24", "via", R1_RIGHT])
        run(["ip", "-n", s, "route", "add", "default", "via", R2_RIGHT])

    def close(self) -> None:
        delete_namespaces(list(self.ns.values()))
