"""Pool `dihs eval` results of several test sets: is the cascade ahead of dense or of a static
order across data, where each set alone decides by a handful of inputs?

For each target ratio and each comparison the `dihs` rows carry (`vs_dense`, `vs_static`), the
wins and losses are added over the sets and tested as one paired sample (paired.from_counts).
That is valid only for different test sets: two evaluations of the same inputs (a second
training, another bundle) are not independent, and pooling them counts each input twice.
"""

from __future__ import annotations

from .paired import from_counts


class PoolError(ValueError):
    pass


def _counts(result: dict) -> dict[tuple[float, str], tuple[int, int]]:
    """(target ratio, against) -> (wins, losses), for every `dihs` row of one eval result."""
    out = {}
    for row in result.get("rows", []):
        if row.get("policy") != "dihs":
            continue
        target = row["target_flops_ratio"]
        against = {"dense": row["vs_dense"]} if "vs_dense" in row else {}
        for name, c in {**against, **row.get("vs_static", {})}.items():
            out[(target, name)] = (int(c["wins"]), int(c["losses"]))
    return out


def pool_evals(results: list[dict], names: list[str]) -> dict:
    """Pooled comparisons over the sets; only (target, against) pairs that every set has."""
    if len(results) < 2:
        raise PoolError("pooling needs the eval JSONs of at least two test sets")
    per_set = []
    for result, name in zip(results, names):
        if not isinstance(result, dict) or not isinstance(result.get("n"), int) or "rows" not in result:
            raise PoolError(f"{name} is not a `dihs eval` result (no n and rows)")
        try:
            comps = _counts(result)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise PoolError(
                f"{name} is not a `dihs eval` result (a dihs row without target or counts)"
            ) from None
        if any(wins < 0 or losses < 0 for wins, losses in comps.values()):
            raise PoolError(f"{name} has negative win or loss counts")
        if not comps:
            raise PoolError(
                f"{name} has no dihs rows compared with dense or a static order: evaluate with "
                "--policies dense dihs static-heads static-width kwon"
            )
        per_set.append(comps)
    common = set.intersection(*(set(c) for c in per_set))
    n = sum(r["n"] for r in results)
    rows = []
    for target, against in sorted(common, key=lambda k: (-k[0], k[1])):
        counts = [c[(target, against)] for c in per_set]
        pooled = from_counts(sum(wins for wins, _ in counts), sum(losses for _, losses in counts), n)
        rows.append(
            {
                "target_flops_ratio": target,
                "against": against,
                **pooled,
                "per_set": [
                    {"set": name, "wins": wins, "losses": losses}
                    for name, (wins, losses) in zip(names, counts)
                ],
            }
        )
    return {"sets": [{"set": name, "n": r["n"]} for name, r in zip(names, results)], "n": n, "rows": rows}
