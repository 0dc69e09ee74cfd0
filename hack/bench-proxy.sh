#!/usr/bin/env bash
# Benchmarks sluice-proxy against HAProxy and nginx on this machine (loopback only).
#   hack/bench-proxy.sh            # ~6 min; results in $OUT (default /tmp/sluice-bench-<time>)
# Env: ROUNDS (3), DUR_MAX (6s wrk runs), DUR_LAT (6s fortio runs), RELOADS (5),
#   BASELINE_PROXY (a second sluice-proxy binary, e.g. a build of the previous commit:
#   measured as target sluice-base in the same rounds, right before sluice-proxy),
#   SKIP_EXTRA=1 (only the rounds: no access-log, 100-VirtualService or reload runs).
# Layout: every proxy pinned to core 0 (taskset), load generator and the two
# sluice-demo backends (release) on core 1. 90/10 split between the backends in all
# three proxies, keep-alive on both sides. Rounds alternate the targets:
# direct -> sluice-proxy -> haproxy -> nginx, repeated ROUNDS times; medians and
# [min-max] are reported. Results: docs/benchmarks.md.
source "$(dirname "$0")/lib.sh"
ROUNDS=${ROUNDS:-3}; DUR_MAX=${DUR_MAX:-6s}; DUR_LAT=${DUR_LAT:-6s}; RELOADS=${RELOADS:-5}
OUT=${OUT:-/tmp/sluice-bench-$(date +%Y%m%d-%H%M%S)}; mkdir -p "$OUT"
BENCH_TARGET=${BENCH_TARGET:-/work/bench-target}
STATS="python3 $ROOT/hack/bench/stats.py"
P_V1=18081 P_V2=18082 P_ADMIN=18100 P_SLUICE=18101 P_HAPROXY=18102 P_NGINX=18103 P_ADMIN100=18110 P_SLUICE100=18111
P_BASE=18104 P_ADMIN_BASE=18105
[ "$(nproc)" -ge 2 ] || die "needs 2 cores (proxy on core 0, load + backends on core 1)"
PROXY_CPU=0 LOAD_CPU=1

# --- tools (idempotent) ---
apt_ensure haproxy nginx wrk curl python3 bc
FORTIO=$SLUICE_CACHE/bin/fortio
if [ ! -x "$FORTIO" ]; then
  # fortio's newest versions pull a module the Go proxy refuses here; 1.63.3 builds.
  log "installing fortio 1.63.3 (rate-limited load generator) into $SLUICE_CACHE/bin"
  (cd /tmp && GOBIN=$SLUICE_CACHE/bin go install fortio.org/fortio@v1.63.3)
fi
log "building sluice-proxy and sluice-demo (release) in $BENCH_TARGET"
(cd "$ROOT" && CARGO_TARGET_DIR=$BENCH_TARGET cargo build -q --release -p sluice --no-default-features --bin sluice-proxy --bin sluice-demo)
PROXY=$BENCH_TARGET/release/sluice-proxy DEMO=$BENCH_TARGET/release/sluice-demo
# Debian starts its own haproxy/nginx services on install; ours run on our own ports.
for p in $P_V1 $P_V2 $P_ADMIN $P_SLUICE $P_HAPROXY $P_NGINX $P_ADMIN100 $P_SLUICE100 $P_BASE $P_ADMIN_BASE; do port_free $p bench; done

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_http() { for _ in $(seq 100); do curl -s -o /dev/null -H 'Host: bench' "http://127.0.0.1:$1/" && return 0; sleep 0.1; done; die "nothing answers on :$1"; }
rss_kb() { local t=0; for p in "$@"; do t=$((t + $(awk '/^VmRSS/{print $2}' /proc/$p/status))); done; echo $t; }

# --- backends ---
for v in 1 2; do
  port=$((18080 + v))
  RUST_LOG=warn taskset -c $LOAD_CPU "$DEMO" --listen 127.0.0.1:$port --name bench --version v$v >"$OUT/demo-v$v.log" 2>&1 &
  PIDS+=($!)
done
wait_http $P_V1; wait_http $P_V2

# --- configs ---
vs() { # name host w1 w2 [marker]
  cat <<Y
- apiVersion: networking.istio.io/v1beta1
  kind: VirtualService
  metadata: {name: $1}
  spec:
    hosts: [$2]
    http:
    - route:
      - destination: {host: bench, subset: v1}
        weight: $3
      - destination: {host: bench, subset: v2}
        weight: $4
Y
}
common_tail() {
  cat <<Y
destinationRules:
- metadata: {name: bench}
  spec:
    host: bench
    subsets:
    - {name: v1, labels: {version: v1}}
    - {name: v2, labels: {version: v2}}
endpoints:
- {service: bench, address: "127.0.0.1:$P_V1", labels: {version: v1}, workload: bench-v1}
- {service: bench, address: "127.0.0.1:$P_V2", labels: {version: v2}, workload: bench-v2}
Y
}
sluice_cfg() { # w1 w2 [n_extra_vs]
  echo "# bench config weights $1/$2$([ "$2" = 100 ] && echo ' bench-v2-all')"
  echo "namespace: bench"; echo "virtualServices:"
  vs bench bench "$1" "$2"
  for i in $(seq 1 "${3:-0}"); do vs "svc-$i" "svc-$i" 90 10; done
  common_tail
}
sluice_cfg 90 10 >"$OUT/sluice.yaml"
sluice_cfg 90 10 99 >"$OUT/sluice-100.yaml"
sluice_cfg 100 0 >"$OUT/reload-v1.yaml"; sluice_cfg 0 100 >"$OUT/reload-v2.yaml"
cat >"$OUT/haproxy.cfg" <<Y
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:$P_HAPROXY
  default_backend be
backend be
  balance roundrobin
  server v1 127.0.0.1:$P_V1 weight 90
  server v2 127.0.0.1:$P_V2 weight 10
Y
mkdir -p "$OUT/nginx"
cat >"$OUT/nginx.conf" <<Y
worker_processes 1;
daemon off;
pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $OUT/nginx; proxy_temp_path $OUT/nginx; fastcgi_temp_path $OUT/nginx;
  uwsgi_temp_path $OUT/nginx; scgi_temp_path $OUT/nginx;
  upstream be { server 127.0.0.1:$P_V1 weight=90; server 127.0.0.1:$P_V2 weight=10; keepalive 128; }
  server {
    listen 127.0.0.1:$P_NGINX;
    keepalive_requests 1000000;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
Y

# --- proxies (each on core 0) ---
taskset -c $PROXY_CPU "$PROXY" --config "$OUT/sluice.yaml" --namespace bench --listen 127.0.0.1:$P_SLUICE \
  --admin 127.0.0.1:$P_ADMIN --access-log false >"$OUT/sluice.log" 2>&1 &
SLUICE_PID=$!; PIDS+=($SLUICE_PID)
taskset -c $PROXY_CPU haproxy -f "$OUT/haproxy.cfg" -db >"$OUT/haproxy.log" 2>&1 &
HAPROXY_PID=$!; PIDS+=($HAPROXY_PID)
taskset -c $PROXY_CPU nginx -c "$OUT/nginx.conf" -p "$OUT/nginx" -e "$OUT/nginx/error.log" >"$OUT/nginx.log" 2>&1 &
NGINX_PID=$!; PIDS+=($NGINX_PID)
for p in $P_SLUICE $P_HAPROXY $P_NGINX; do wait_http $p; done
nginx_pids() { echo $NGINX_PID $(pgrep -P $NGINX_PID); }

declare -A PORT=([direct]=$P_V1 [sluice-proxy]=$P_SLUICE [haproxy]=$P_HAPROXY [nginx]=$P_NGINX [sluice-base]=$P_BASE)
TARGETS=(direct sluice-proxy haproxy nginx)
PROXIES=(sluice-proxy haproxy nginx)
if [ -n "${BASELINE_PROXY:-}" ]; then
  taskset -c $PROXY_CPU "$BASELINE_PROXY" --config "$OUT/sluice.yaml" --namespace bench --listen 127.0.0.1:$P_BASE \
    --admin 127.0.0.1:$P_ADMIN_BASE --access-log false >"$OUT/sluice-base.log" 2>&1 &
  BASE_PID=$!; PIDS+=($BASE_PID); wait_http $P_BASE
  TARGETS=(direct sluice-base sluice-proxy haproxy nginx)
  PROXIES=(sluice-base sluice-proxy haproxy nginx)
fi
R=$OUT/results.tsv; : >"$R"
rec() { printf '%s\t%s\t%s\t%s\n' "$@" >>"$R"; }
{
  echo "date: $(date -u +%FT%TZ)"; echo "host: $(uname -srm), $(nproc) cores, $(awk '/MemTotal/{print $2/1048576 " GiB"}' /proc/meminfo)"
  echo "cpu: $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)"
  echo "haproxy: $(haproxy -v | head -1)"; echo "nginx: $(nginx -v 2>&1)"; echo "wrk: $(wrk -v 2>&1 | head -1)"
  echo "fortio: $($FORTIO version 2>&1 | head -1)"; echo "sluice: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- src || echo ' + uncommitted changes')"
  [ -z "${BASELINE_PROXY:-}" ] || echo "sluice-base: $BASELINE_PROXY"
  echo "load before: $(uptime)"
} | tee "$OUT/env.txt" >&2

# --- the split each proxy actually does (share of v2 over 1000 requests) ---
for t in "${PROXIES[@]}"; do rec 0 "$t" split_v2_share "$($STATS split ${PORT[$t]} bench 1000)"; done

# --- idle RSS before load ---
rec 0 sluice-proxy rss_idle_mb "$(echo "scale=1; $(rss_kb $SLUICE_PID)/1024" | bc)"
rec 0 haproxy rss_idle_mb "$(echo "scale=1; $(rss_kb $HAPROXY_PID)/1024" | bc)"
rec 0 nginx rss_idle_mb "$(echo "scale=1; $(rss_kb $(nginx_pids))/1024" | bc)"

# --- rounds ---
for r in $(seq 1 "$ROUNDS"); do
  log "round $r/$ROUNDS: max throughput (wrk -t1 -c50 -d$DUR_MAX)"
  for t in "${TARGETS[@]}"; do
    taskset -c $LOAD_CPU wrk -t1 -c50 -d"$DUR_MAX" -H 'Host: bench' "http://127.0.0.1:${PORT[$t]}/" >"$OUT/wrk-$r-$t.txt"
    read -r rps non2xx _ <<<"$($STATS wrk "$OUT/wrk-$r-$t.txt")"
    rec "$r" "$t" rps "$rps"; [ "$non2xx" = 0 ] || rec "$r" "$t" non2xx "$non2xx"
    case $t in sluice-base) rec "$r" "$t" rss_after_load_mb "$(echo "scale=1; $(rss_kb $BASE_PID)/1024" | bc)";;
      sluice-proxy) rec "$r" "$t" rss_after_load_mb "$(echo "scale=1; $(rss_kb $SLUICE_PID)/1024" | bc)";;
      haproxy) rec "$r" "$t" rss_after_load_mb "$(echo "scale=1; $(rss_kb $HAPROXY_PID)/1024" | bc)";;
      nginx) rec "$r" "$t" rss_after_load_mb "$(echo "scale=1; $(rss_kb $(nginx_pids))/1024" | bc)";; esac
  done
  for qps in 1000 5000; do
    log "round $r/$ROUNDS: latency at $qps rps (fortio -c 16 -r 10us -t $DUR_LAT)"
    declare -A P50=() P99=()
    for t in "${TARGETS[@]}"; do
      taskset -c $LOAD_CPU "$FORTIO" load -quiet -qps $qps -uniform -r 0.00001 -c 16 -t "$DUR_LAT" -p 50,99 -H 'Host: bench' \
        -json "$OUT/fortio-$r-$qps-$t.json" "http://127.0.0.1:${PORT[$t]}/" >/dev/null 2>&1
      read -r p50 p99 aqps errs <<<"$($STATS fortio "$OUT/fortio-$r-$qps-$t.json")"
      P50[$t]=$p50; P99[$t]=$p99
      rec "$r" "$t" "p50_ms@$qps" "$p50"; rec "$r" "$t" "p99_ms@$qps" "$p99"; rec "$r" "$t" "actual_rps@$qps" "$aqps"
      [ "$errs" = 0 ] || rec "$r" "$t" "errors@$qps" "$errs"
    done
    for t in "${PROXIES[@]}"; do
      rec "$r" "$t" "added_p50_ms@$qps" "$(echo "${P50[$t]} - ${P50[direct]}" | bc -l)"
      rec "$r" "$t" "added_p99_ms@$qps" "$(echo "${P99[$t]} - ${P99[direct]}" | bc -l)"
    done
  done
done

if [ "${SKIP_EXTRA:-0}" != 1 ]; then
# --- sluice-proxy with the access log on (its default), to /dev/null ---
kill $SLUICE_PID; wait $SLUICE_PID 2>/dev/null || true
taskset -c $PROXY_CPU "$PROXY" --config "$OUT/sluice.yaml" --namespace bench --listen 127.0.0.1:$P_SLUICE \
  --admin 127.0.0.1:$P_ADMIN >/dev/null 2>&1 &
SLUICE_PID=$!; PIDS+=($SLUICE_PID); wait_http $P_SLUICE
log "sluice-proxy with access log: max throughput"
taskset -c $LOAD_CPU wrk -t1 -c50 -d"$DUR_MAX" -H 'Host: bench' "http://127.0.0.1:$P_SLUICE/" >"$OUT/wrk-accesslog.txt"
rec 1 sluice-proxy+accesslog rps "$($STATS wrk "$OUT/wrk-accesslog.txt" | cut -d' ' -f1)"
kill $SLUICE_PID; wait $SLUICE_PID 2>/dev/null || true

# --- 100 VirtualServices: RSS idle and under load ---
log "sluice-proxy with 100 VirtualServices: RSS"
taskset -c $PROXY_CPU "$PROXY" --config "$OUT/sluice-100.yaml" --namespace bench --listen 127.0.0.1:$P_SLUICE100 \
  --admin 127.0.0.1:$P_ADMIN100 --access-log false >"$OUT/sluice-100.log" 2>&1 &
S100=$!; PIDS+=($S100); wait_http $P_SLUICE100; sleep 1
rec 0 sluice-proxy rss_idle_100vs_mb "$(echo "scale=1; $(rss_kb $S100)/1024" | bc)"
taskset -c $LOAD_CPU wrk -t1 -c50 -d"$DUR_MAX" -H 'Host: svc-50' "http://127.0.0.1:$P_SLUICE100/" >"$OUT/wrk-100vs.txt" &
WRK=$!; sleep 3; rec 0 sluice-proxy rss_under_load_100vs_mb "$(echo "scale=1; $(rss_kb $S100)/1024" | bc)"; wait $WRK
rec 0 sluice-proxy rps_100vs "$($STATS wrk "$OUT/wrk-100vs.txt" | cut -d' ' -f1)"
rec 0 sluice-proxy rss_after_load_100vs_mb "$(echo "scale=1; $(rss_kb $S100)/1024" | bc)"
kill $S100; wait $S100 2>/dev/null || true

# --- weight change: file mode, default --reload-poll (1s) ---
log "weight change to live ($RELOADS flips, default --reload-poll 1s)"
cp "$OUT/reload-v1.yaml" "$OUT/reload.yaml"
taskset -c $PROXY_CPU "$PROXY" --config "$OUT/reload.yaml" --namespace bench --listen 127.0.0.1:$P_SLUICE \
  --admin 127.0.0.1:$P_ADMIN --access-log false >"$OUT/sluice-reload.log" 2>&1 &
SR=$!; PIDS+=($SR); wait_http $P_SLUICE
for i in $(seq 1 "$RELOADS"); do
  if [ $((i % 2)) = 1 ]; then next=reload-v2.yaml; else next=reload-v1.yaml; fi
  sleep 0.$((RANDOM % 10))  # not in phase with the poll timer
  rec "$i" sluice-proxy weight_change_live_s "$($STATS reload $P_SLUICE bench "$OUT/reload.yaml" "$OUT/$next")"
done
kill $SR; wait $SR 2>/dev/null || true

fi

echo "load after: $(uptime)" | tee -a "$OUT/env.txt" >&2
$STATS summary "$R" | tee "$OUT/summary.md"
if [ -n "${BASELINE_PROXY:-}" ]; then
  # stats.py's table has fixed columns; the baseline comparison is printed here.
  python3 - "$R" <<'PY' | tee -a "$OUT/summary.md"
import statistics, sys
data = {}
for line in open(sys.argv[1]):
    r, t, m, v = line.rstrip("\n").split("\t")
    try:
        data.setdefault(m, {}).setdefault(t, {})[r] = float(v)
    except ValueError:
        pass
def cell(d):
    v = list(d.values())
    return f"{statistics.median(v):.3f} [{min(v):.3f}-{max(v):.3f}] n={len(v)}" if v else "-"
print("\n| metric | sluice-base | sluice-proxy | sluice-proxy / sluice-base per round |")
print("|---|---|---|---|")
for m in sorted(data):
    b, n = data[m].get("sluice-base", {}), data[m].get("sluice-proxy", {})
    if not b:
        continue
    ratios = ", ".join(f"{n[r] / b[r]:.2f}" for r in sorted(b) if r in n and b[r])
    print(f"| {m} | {cell(b)} | {cell(n)} | {ratios} |")
print("\nsluice-proxy / haproxy rps per round: " + ", ".join(
    f"{data['rps']['sluice-proxy'][r] / h:.2f}" for r, h in sorted(data["rps"]["haproxy"].items())))
print("sluice-base / haproxy rps per round: " + ", ".join(
    f"{data['rps']['sluice-base'][r] / h:.2f}" for r, h in sorted(data["rps"]["haproxy"].items())))
PY
fi
log "raw results in $OUT"
