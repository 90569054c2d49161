# Shared by the benchmarks (sourced): installs what is missing, starts servers on free ports of
# 127.0.0.1 for this run only, and stops them (and removes $work) on exit.
# Expects $root (the repository) and $tools (.tools/).

work=$(mktemp -d -p "${BENCH_TMP:-/var/tmp}")
bench_pids=()
bench_cleanup() {
  for p in "${bench_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work" 2>/dev/null || true
}
trap bench_cleanup EXIT
AZURITE_KEY="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==" # Azurite's well-known key

bench_say() { printf '[bench] %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 150); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.2; done
  bench_say "no server on port $1"; exit 2
}

# The release build of this checkout, or REDRIVE_BIN (another build, for a before/after).
build_redrive() {
  if [ -n "${REDRIVE_BIN:-}" ]; then redrive=$REDRIVE_BIN; return 0; fi
  (cd "$root" && cargo build -q --release -p redrive)
  redrive="${CARGO_TARGET_DIR:-$root/target}/release/redrive"
}

need_azurite() {
  [ -x "$tools/node/node_modules/.bin/azurite-blob" ] && return 0
  bench_say "installing azurite@3.37.0 into .tools/node"
  npm install --prefix "$tools/node" --no-audit --no-fund --loglevel=error azurite@3.37.0 >&2
}
need_moto() {
  [ -x "$tools/venv/bin/moto_server" ] && return 0
  bench_say "installing moto[server]==5.2.5 into .tools/venv"
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==5.2.5" >&2
}
need_s3s_fs() {
  command -v s3s-fs >/dev/null && return 0
  bench_say "installing s3s-fs 0.14.1 (cargo install, a few minutes)"
  cargo install --locked s3s-fs@0.14.1 --features binary >&2
}
need_rclone() {
  command -v rclone >/dev/null && return 0
  bench_say "installing rclone (Debian package)"
  (apt-get install -y -qq rclone || (apt-get update -qq && apt-get install -y -qq rclone)) >&2
}
# bench_venv PACKAGE… → prints the path of .tools/bench-venv, with the packages installed.
bench_venv() {
  local venv="$tools/bench-venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$@" >&2
  echo "$venv"
}

# Servers, each on a free port, for this run only.
# With REQUEST_LOGS=1, Azurite and s3s-fs log each request's operation (for count_requests;
# it slows them down: not for timed runs).
start_azurite() {
  AZ_PORT=$(free_port)
  local debug=()
  [ "${REQUEST_LOGS:-0}" = 1 ] && debug=(--debug "$work/azurite-requests.log")
  "$tools/node/node_modules/.bin/azurite-blob" --silent --skipApiVersionCheck --loose "${debug[@]}" \
    --blobHost 127.0.0.1 --blobPort "$AZ_PORT" --location "$work/azurite" >"$work/azurite.log" 2>&1 &
  bench_pids+=($!)
  wait_port "$AZ_PORT"
}
# Azurite with its queue service too (the S1 job posts a message per file).
start_azurite_with_queue() {
  AZ_PORT=$(free_port); AZ_QUEUE_PORT=$(free_port)
  "$tools/node/node_modules/.bin/azurite" --silent --skipApiVersionCheck --loose \
    --blobHost 127.0.0.1 --blobPort "$AZ_PORT" --queueHost 127.0.0.1 --queuePort "$AZ_QUEUE_PORT" \
    --tablePort "$(free_port)" --location "$work/azurite" >"$work/azurite.log" 2>&1 &
  bench_pids+=($!)
  wait_port "$AZ_PORT"; wait_port "$AZ_QUEUE_PORT"
}
start_moto() {
  MOTO_PORT=$(free_port)
  "$tools/venv/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$work/moto.log" 2>&1 &
  bench_pids+=($!)
  wait_port "$MOTO_PORT"
}
start_s3s_fs() {
  S3_PORT=$(free_port); S3_ROOT="$work/s3s"
  mkdir -p "$S3_ROOT"
  local log=warn
  [ "${REQUEST_LOGS:-0}" = 1 ] && log=s3s::ops=debug
  RUST_LOG=$log NO_COLOR=1 s3s-fs --host 127.0.0.1 --port "$S3_PORT" --access-key bench \
    --secret-key benchbench "$S3_ROOT" >"$work/s3s.log" 2>&1 &
  bench_pids+=($!)
  wait_port "$S3_PORT"
}
# stop_servers: stops every server started so far (their data stays in $work).
stop_servers() {
  for p in "${bench_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait "${bench_pids[@]}" 2>/dev/null || true
  bench_pids=()
}
# count_requests → "OPERATION COUNT" lines for the requests logged since the last call
# (REQUEST_LOGS=1): Azurite's "Operation=…" and s3s-fs's "resolved route … op = …".
count_requests() {
  python3 - "$work" <<'PY'
import collections, os, re, sys
work = sys.argv[1]
seen_path = os.path.join(work, "requests.seen")
seen = dict(l.split() for l in open(seen_path)) if os.path.exists(seen_path) else {}
ops = collections.Counter()
for name, pattern in (("azurite-requests.log", r"DispatchMiddleware: Operation=(\w+)"),
                      ("s3s.log", r"resolved route.*?op(?:\x1b\[[0-9;]*m)?\s*[=:]\s*(?:\x1b\[[0-9;]*m)?(\w+)")):
    path = os.path.join(work, name)
    if not os.path.exists(path):
        continue
    with open(path, errors="replace") as f:
        f.seek(int(seen.get(name, 0)))
        text = f.read()
        seen[name] = str(f.tell())
    ops.update(re.findall(pattern, text))
open(seen_path, "w").write("".join(f"{k} {v}\n" for k, v in seen.items()))
for op, n in sorted(ops.items()):
    print(op, n)
PY
}
# s3s-fs keeps a bucket as a folder of its root.
s3_mkbucket() { mkdir -p "$S3_ROOT/$1"; }
az_request() { python3 "$root/bench/azurite.py" "$AZ_PORT" request "$@"; }
az_count() { python3 "$root/bench/azurite.py" "$AZ_PORT" count "$1"; }
# rclone_remotes S3_ENDPOINT S3_KEY S3_SECRET: sets `rclone_env`, a command prefix that gives
# rclone two remotes, `bs3:` (that S3 endpoint) and `baz:` (this run's Azurite, through an
# account SAS URL: rclone 1.60 builds https://ACCOUNT.ENDPOINT from an endpoint and knows the
# emulator only at port 10000). rclone 1.60 refuses a custom CA bundle on plain http: it runs
# without one.
rclone_remotes() {
  rclone_env=(env -u AWS_CA_BUNDLE
    RCLONE_CONFIG_BS3_TYPE=s3 RCLONE_CONFIG_BS3_PROVIDER=Other RCLONE_CONFIG_BS3_ENDPOINT="$1"
    RCLONE_CONFIG_BS3_ACCESS_KEY_ID="$2" RCLONE_CONFIG_BS3_SECRET_ACCESS_KEY="$3"
    RCLONE_CONFIG_BS3_FORCE_PATH_STYLE=true
    RCLONE_CONFIG_BAZ_TYPE=azureblob
    RCLONE_CONFIG_BAZ_SAS_URL="$(python3 "$root/bench/azurite.py" "${AZ_PORT:-0}" sas)")
}
