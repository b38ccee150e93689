#!/usr/bin/env bash
# make demo: natsbind on the embedded default (local mode) against a real nats-server.
# 1. `natsbind init` makes an operator, a system account and a nats-server config in .cache/demo.
# 2. nats-server starts in operator mode with a full account resolver.
# 3. natsbind pushes a sample project account (scoped "ci" signing key) and shows that every
#    server accepted it, that the resolver serves it back, and what the server knows of it.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO="$PWD/.cache/demo"
natsbind() { node src/cli/main.ts "$@"; }
if [[ -t 1 ]]; then say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }; else say() { printf '\n== %s\n' "$*"; }; fi

read -r PORT MONITOR < <(node -e '
  const net = require("node:net");
  const free = () => new Promise((r) => { const s = net.createServer().listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => r(p)); }); });
  Promise.all([free(), free()]).then((p) => console.log(p.join(" ")));')

say "natsbind init --out $DEMO"
rm -rf "$DEMO"
natsbind init --out "$DEMO" --name demo-operator --port "$PORT" --monitor-port "$MONITOR"

say "nats-server -c $DEMO/nats-server.conf (operator mode, full resolver)"
nats-server -c "$DEMO/nats-server.conf" >"$DEMO/nats-server.log" 2>&1 &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null || true; wait $SERVER_PID 2>/dev/null || true' EXIT
node -e '
  const url = process.argv[1], deadline = Date.now() + 15000;
  (async function poll() {
    try { if ((await fetch(url)).ok) return console.log("nats-server is ready"); } catch {}
    if (Date.now() > deadline) { console.error("nats-server did not become ready in 15 s"); process.exit(1); }
    setTimeout(poll, 100);
  })();' "http://127.0.0.1:$MONITOR/healthz"

say "natsbind accounts push-sample --name demo-group/demo-project --project-id 42"
natsbind accounts push-sample --config "$DEMO/natsbind.yaml" --name demo-group/demo-project --project-id 42 | tee "$DEMO/push.out"
ACCOUNT=$(sed -n 's/^account \(A[A-Z0-9]*\) .*/\1/p' "$DEMO/push.out")

say "natsbind accounts list"
natsbind accounts list --config "$DEMO/natsbind.yaml"

say "natsbind accounts lookup $ACCOUNT"
natsbind accounts lookup --config "$DEMO/natsbind.yaml" "$ACCOUNT"

say "what nats-server stored in its full resolver directory ($DEMO/jwt)"
ls -l "$DEMO/jwt" | sed -n '2,$p'
grep -h "$ACCOUNT" "$DEMO/nats-server.log" || true

say "done: files in $DEMO (keys are 0600; operator/operator.nk belongs offline)"
