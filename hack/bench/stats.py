#!/usr/bin/env python3
"""Helpers for hack/bench-proxy.sh (stdlib only).

  stats.py fortio FILE.json            -> "p50_ms p99_ms actual_qps errors"
  stats.py wrk FILE.txt                -> "req_per_s non2xx"
  stats.py split PORT HOST N           -> share of v2 answers over N requests
  stats.py reload PORT HOST FILE NEW   -> seconds from writing NEW over FILE until 20
                                          answers in a row come from NEW's version
  stats.py summary RESULTS.tsv         -> markdown tables (median [min-max])
"""
import http.client, json, os, re, statistics, sys, time


def fortio(path):
    d = json.load(open(path))
    pct = {p["Percentile"]: p["Value"] * 1000 for p in d["DurationHistogram"]["Percentiles"]}
    codes = d.get("RetCodes", {})
    errors = sum(v for k, v in codes.items() if str(k) != "200")
    print(f'{pct[50]:.4f} {pct[99]:.4f} {d["ActualQPS"]:.1f} {errors}')


def wrk(path):
    text = open(path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errs = re.search(r"Socket errors: .*", text)
    print(f"{rps:.0f} {int(m.group(1)) if m else 0}{' ' + errs.group(0).replace(' ', '_') if errs else ''}")


def version_of(conn, host):
    conn.request("GET", "/", headers={"Host": host})
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        return None
    return json.loads(body).get("version")


def split(port, host, n):
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=5)
    got = [version_of(conn, host) for _ in range(int(n))]
    print(f"{got.count('v2') / len(got):.3f}")


def reload(port, host, path, new_cfg_path):
    """Writes new_cfg_path's content over `path` (atomic rename), then polls until 20
    answers in a row come from the version that the new config sends all traffic to."""
    target = open(new_cfg_path).read()
    want = "v2" if "bench-v2-all" in target else "v1"
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=5)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(target)
    t0 = time.monotonic()
    os.rename(tmp, path)
    first, streak = None, 0
    while time.monotonic() - t0 < 10:
        v = version_of(conn, host)
        now = time.monotonic() - t0
        if v == want:
            first = now if first is None else first
            streak += 1
            if streak >= 20:
                print(f"{first:.3f}")
                return
        else:
            first, streak = None, 0
    print("timeout")


def summary(path):
    rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip() and not l.startswith("#")]
    # columns: round target metric value
    data = {}
    for _, target, metric, value in rows:
        try:
            data.setdefault(metric, {}).setdefault(target, []).append(float(value))
        except ValueError:
            pass
    targets = ["direct", "sluice-proxy", "haproxy", "nginx", "sluice-proxy+accesslog"]
    def cell(vals, fmt):
        if not vals:
            return "-"
        med = statistics.median(vals)
        return f"{fmt.format(med)} [{fmt.format(min(vals))}-{fmt.format(max(vals))}] n={len(vals)}"
    print("| metric | " + " | ".join(targets) + " |")
    print("|---|" + "---|" * len(targets))
    fmts = {"rps": "{:.0f}"}
    for metric in sorted(data):
        fmt = fmts.get(metric, "{:.3f}")
        print(f"| {metric} | " + " | ".join(cell(data[metric].get(t, []), fmt) for t in targets) + " |")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"fortio": fortio, "wrk": wrk, "split": split, "reload": reload, "summary": summary}[cmd](*args)
