"""The plan the controller hands a guest (:class:`netcheck.agent.wire.Plan`), read with the
checks the guest relies on: the fields it uses are there and of the right type, ports in
1..65535, counts bounded. The controller made it; this only refuses a plan that would make
the guest misbehave."""

from typing import Any, Dict, List

MAX_LISTEN = 10000
MAX_CHECKS = 100000


class PlanError(ValueError):
    """The controller's answer is not a plan this agent can follow."""


def _port(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise PlanError("%s: %r is not a port" % (where, value))
    return value


def _number(plan: Dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = plan.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise PlanError("plan.%s: %r is not a number in %g..%g" % (key, value, low, high))
    return float(value)


class Plan:
    """What the guest does: hold `listen` ports, probe `checks`, every `period_s`."""

    def __init__(self, data: Any) -> None:
        if not isinstance(data, dict):
            raise PlanError("the plan is not a JSON object")
        for key in ("role", "host", "address"):
            if not isinstance(data.get(key), str):
                raise PlanError("plan.%s: missing or not a string" % key)
        self.role: str = data["role"]
        self.host: str = data["host"]
        self.address: str = data["address"]
        listen, checks = data.get("listen"), data.get("checks")
        if not isinstance(listen, list) or len(listen) > MAX_LISTEN:
            raise PlanError("plan.listen: not a list of at most %d" % MAX_LISTEN)
        if not isinstance(checks, list) or len(checks) > MAX_CHECKS:
            raise PlanError("plan.checks: not a list of at most %d" % MAX_CHECKS)
        self.listen: List[int] = []
        for i, item in enumerate(listen):
            if not isinstance(item, dict):
                raise PlanError("plan.listen[%d]: not an object" % i)
            self.listen.append(_port(item.get("port"), "plan.listen[%d].port" % i))
        self.checks: List[Dict[str, Any]] = []
        for i, item in enumerate(checks):
            where = "plan.checks[%d]" % i
            if not isinstance(item, dict):
                raise PlanError(where + ": not an object")
            for key in ("check_id", "dst_host", "dst_address"):
                if not isinstance(item.get(key), str):
                    raise PlanError("%s.%s: missing or not a string" % (where, key))
            _port(item.get("port"), where + ".port")
            if isinstance(item.get("interaction"), bool) or not isinstance(
                item.get("interaction"), int
            ):
                raise PlanError(where + ".interaction: not an integer")
            self.checks.append(item)
        self.timeout_s = _number(data, "timeout_s", 2.0, 0.01, 600)
        self.retries = int(_number(data, "retries", 2, 0, 100))
        self.period_s = _number(data, "period_s", 300.0, 1, 86400 * 7)
        self.concurrency = int(_number(data, "concurrency", 512, 1, 1000000))
        self.raw = data

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.host)
