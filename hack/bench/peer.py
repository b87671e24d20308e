#!/usr/bin/env python3
"""The peer: what a user of the Python SDK (aepp) would do by hand, one audience after another.

For each audience: get a token once, create the audience, poll the operation until it is done,
start an ingestion run, poll the run until it is done; then the next audience. Standard library
only (urllib), against the AEP emulator. With --operation-delay-ms/--run-delay-ms the emulator's
latency is set for the run (PUT /_emulator/config) and restored afterwards.

Times K audiences and extrapolates linearly to N (the output says so): a sequential script's time
grows with N by construction.

  hack/bench/peer.py --url http://127.0.0.1:8080 --k 5 --n 1000 --json out.json
"""
import argparse
import json
import time
import urllib.parse
import urllib.request

HEADERS = {"x-api-key": "local-client", "x-gw-ims-org-id": "LOCAL0RG@AdobeOrg", "x-sandbox-name": "prod"}


def call(method, url, body=None, token=None, form=False):
    headers = dict(HEADERS)
    data = None
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None and form:
        data = urllib.parse.urlencode(body).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=60) as resp:
        raw = resp.read()
        return json.loads(raw) if raw else None


def audience(base, token, tag, i, poll):
    counts = {"create": 0, "poll_operation": 0, "start_run": 0, "poll_run": 0}
    body = {
        "name": f"Peer {tag} {i}",
        "description": "Members exported nightly from the CRM",
        "fields": [
            {"name": "ppid", "type": "string", "identityNs": "email"},
            {"name": "list_id", "type": "string", "labels": ["core/C2", "custom/deep"]},
            {"name": "delete", "type": "number"},
            {"name": "process_consent", "type": "string"},
        ],
        "sourceSpec": {"params": {"path": "activation/sample-source/example.csv", "type": "file",
                                  "sourceType": "Cloud Storage",
                                  "baseConnectionId": "1d1d4bc5-b527-46a3-9863-530246a61b2b"}},
        "ttlInDays": 40,
        "labels": ["core/C1"],
        "audienceType": "people",
        "originName": "CUSTOM_UPLOAD",
    }
    ais = f"{base}/data/core/ais/external-audience"
    op = call("POST", f"{ais}/", body, token)
    counts["create"] += 1
    while True:
        status = call("GET", f"{ais}/operations/{op['operationId']}", token=token)
        counts["poll_operation"] += 1
        if status.get("status") in ("SUCCESS", "FAILED"):
            break
        time.sleep(poll)
    if status["status"] != "SUCCESS":
        raise SystemExit(f"peer: create failed: {status}")
    aid = status["audienceId"]
    run = call("POST", f"{ais}/{aid}/runs", {"dataFilterStartTime": 764245635, "differentialIngestion": True}, token)
    counts["start_run"] += 1
    while True:
        r = call("GET", f"{ais}/{aid}/runs/{run['runId']}", token=token)
        counts["poll_run"] += 1
        if r.get("status") in ("SUCCESS", "FAILED", "ERROR", "CANCELLED"):
            break
        time.sleep(poll)
    return counts


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="emulator base URL")
    p.add_argument("--k", type=int, default=5, help="audiences actually created, one after another")
    p.add_argument("--n", type=int, default=1000, help="N to extrapolate to")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between polls (generous: aepp users often wait longer)")
    p.add_argument("--operation-delay-ms", type=int)
    p.add_argument("--run-delay-ms", type=int)
    p.add_argument("--json", help="write the result here")
    a = p.parse_args()
    base = a.url.rstrip("/")
    saved = None
    if a.operation_delay_ms is not None or a.run_delay_ms is not None:
        saved = call("GET", f"{base}/_emulator/config")
        cfg = dict(saved)
        if a.operation_delay_ms is not None:
            cfg["operation_delay_ms"] = a.operation_delay_ms
        if a.run_delay_ms is not None:
            cfg["run_delay_ms"] = a.run_delay_ms
        call("PUT", f"{base}/_emulator/config", cfg)
    try:
        t0 = time.monotonic()
        token = call("POST", f"{base}/ims/token/v3", {
            "grant_type": "client_credentials", "client_id": "local-client", "client_secret": "local-secret",
            "scope": "openid,session,AdobeID,read_organizations,additional_info.projectedProductContext"}, form=True)["access_token"]
        tag = str(int(time.time()))
        per, total = [], {}
        for i in range(a.k):
            s = time.monotonic()
            counts = audience(base, token, tag, i, a.poll)
            per.append(time.monotonic() - s)
            for key, v in counts.items():
                total[key] = total.get(key, 0) + v
        wall = time.monotonic() - t0
    finally:
        if saved is not None:
            call("PUT", f"{base}/_emulator/config", saved)
    mean = sum(per) / len(per)
    result = {
        "k": a.k, "wall_secs": round(wall, 2), "secs_per_audience": round(mean, 2),
        "per_audience_secs": [round(x, 2) for x in per],
        "requests_per_audience": {k: round(v / a.k, 2) for k, v in total.items()},
        "n": a.n, "extrapolated_secs_for_n": round(mean * a.n, 1), "extrapolated": True,
        "poll_secs": a.poll, "operation_delay_ms": a.operation_delay_ms, "run_delay_ms": a.run_delay_ms,
    }
    print(f"peer (sequential, aepp-style): {a.k} audiences in {wall:.1f}s, {mean:.1f}s per audience; "
          f"N={a.n} EXTRAPOLATED (not run): {mean * a.n:.0f}s ({mean * a.n / 3600:.1f} h); "
          f"requests per audience {result['requests_per_audience']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
