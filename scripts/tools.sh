#!/usr/bin/env bash
# Builds the real servers the tests run against (and kubectl and jq, which run the runbooks'
# steps), from the Go module proxy, and links them into .cache/bin. Builds are cached per version
# outside the repo (NATSBIND_TOOLS_CACHE, default ~/.cache/natsbind/<tool>-<version>) so a fresh
# clone on the same machine reuses them.
# Usage: scripts/tools.sh [TOOL ...]   (default: all; TOOL is one of the names in `known` below)
set -euo pipefail

NATS_SERVER_VERSION="${NATS_SERVER_VERSION:-v2.15.2}"
NSC_VERSION="${NSC_VERSION:-v2.12.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KUBERNETES_VERSION="${KUBERNETES_VERSION:-v1.37.2}"
GOJQ_VERSION="${GOJQ_VERSION:-v0.12.17}"
HELM_VERSION="${HELM_VERSION:-v4.3.1}"
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-v0.316.0}"
# The oldest nats-server releases natsbind supports (README, "Supported nats-server versions"):
# 2.10 for the resolver, provisioning and the exchange; 2.11 for the auth callout.
NATS_SERVER_2_10_VERSION="${NATS_SERVER_2_10_VERSION:-v2.10.29}"
NATS_SERVER_2_11_VERSION="${NATS_SERVER_2_11_VERSION:-v2.11.17}"

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${NATSBIND_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/natsbind}"
BIN="$ROOT/.cache/bin"
mkdir -p "$CACHE" "$BIN"
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local

log() { printf '[tools] %s\n' "$*" >&2; }

# link NAME DIR: point .cache/bin/NAME at DIR/NAME.
link() { ln -sfn "$2/$1" "$BIN/$1"; }

# scratch DIR: a throwaway module directory, removed on exit.
scratch() { mktemp -d "$CACHE/.build-XXXXXX"; }

# build_module NAME MODULE VERSION [PACKAGE]: build PACKAGE (default MODULE) from a throwaway module
# that requires MODULE@VERSION. Plain `go install m@v` is not used: it asks the proxy for the
# module's version list (deprecation check), which some modules (nsc) do not serve, and modules
# with relative replace lines (etcd) cannot be installed that way at all.
build_module() {
  local name="$1" module="$2" version="$3" pkg="${4:-$2}" dest="$CACHE/$1-$3"
  if [[ ! -x "$dest/$name" ]]; then
    log "building $name $version"
    local tmp; tmp="$(scratch)"
    ( cd "$tmp" && go mod init "natsbind.tools/$name" >/dev/null 2>&1 \
      && go get "$module@$version" \
      && go build -trimpath -ldflags "-X main.version=$version" -o "$tmp/$name" "$pkg" )
    mkdir -p "$dest" && mv "$tmp/$name" "$dest/$name" && rm -rf "$tmp"
  fi
  link "$name" "$dest"
}

# Kubernetes commands (kube-apiserver, kubectl): k8s.io/kubernetes replaces its staging modules with
# local paths, so a throwaway module requires it and pins every staging module to its published
# v0.Y.Z twin. The version is stamped in as Kubernetes' own build does (hack/lib/version.sh):
# unstamped, both report v0.0.0-master, and `helm install` refuses a chart's kubeVersion range
# against that. A cached binary built before the stamp is rebuilt (only the link step runs again).
# Usage: build_kubernetes_cmd NAME (a directory under k8s.io/kubernetes/cmd).
build_kubernetes_cmd() {
  local name="$1" dest="$CACHE/$1-$KUBERNETES_VERSION"
  local minor="${KUBERNETES_VERSION#v1.}"; minor="${minor%%.*}"
  local stamp="k8s.io/component-base/version"
  local ldflags="-X $stamp.gitVersion=$KUBERNETES_VERSION -X $stamp.gitMajor=1 -X $stamp.gitMinor=$minor -X $stamp.gitTreeState=clean"
  local reported=""
  if [[ -x "$dest/$name" ]]; then
    case "$name" in
      kubectl) reported="$("$dest/$name" version --client 2>/dev/null || true)" ;;
      *) reported="$("$dest/$name" --version 2>/dev/null || true)" ;;
    esac
  fi
  if [[ ! -x "$dest/$name" || "$reported" != *"$KUBERNETES_VERSION"* ]]; then
    log "building $name $KUBERNETES_VERSION (takes minutes)"
    local tmp; tmp="$(scratch)"
    local gomod; gomod="$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    local staging="v0.${KUBERNETES_VERSION#v1.}"
    (
      cd "$tmp"
      go mod init "natsbind.tools/$name" >/dev/null 2>&1
      {
        echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
        grep -E '^\s*k8s\.io/[^ ]+ => \./staging/' "$gomod" | awk -v v="$staging" '{print "replace " $1 " => " $1 " " v}'
      } >> go.mod
      printf 'package tools\nimport _ "k8s.io/kubernetes/cmd/%s"\n' "$name" > tools.go
      go mod tidy >/dev/null
      go build -trimpath -ldflags "$ldflags" -o "$tmp/$name" "k8s.io/kubernetes/cmd/$name"
    )
    mkdir -p "$dest" && mv "$tmp/$name" "$dest/$name" && rm -rf "$tmp"
  fi
  link "$name" "$dest"
}

tools=("$@")
known=(nats-server nsc etcd kube-apiserver kubectl jq nats-server-2.10 nats-server-2.11 helm promtool)
[[ ${#tools[@]} -gt 0 ]] || tools=("${known[@]}")
for tool in "${tools[@]}"; do
  case "$tool" in
    nats-server) build_module nats-server github.com/nats-io/nats-server/v2 "$NATS_SERVER_VERSION" ;;
    nsc) build_module nsc github.com/nats-io/nsc/v2 "$NSC_VERSION" ;;
    etcd) build_module etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" ;;
    kube-apiserver) build_kubernetes_cmd kube-apiserver ;;
    kubectl) build_kubernetes_cmd kubectl ;;
    # The runbooks use jq; gojq (jq in Go) so a machine without Debian's jq runs them too.
    jq) build_module jq github.com/itchyny/gojq "$GOJQ_VERSION" github.com/itchyny/gojq/cmd/gojq ;;
    nats-server-2.10) build_module nats-server-2.10 github.com/nats-io/nats-server/v2 "$NATS_SERVER_2_10_VERSION" ;;
    nats-server-2.11) build_module nats-server-2.11 github.com/nats-io/nats-server/v2 "$NATS_SERVER_2_11_VERSION" ;;
    helm) build_module helm helm.sh/helm/v4 "$HELM_VERSION" helm.sh/helm/v4/cmd/helm ;;
    promtool) build_module promtool github.com/prometheus/prometheus "$PROMETHEUS_VERSION" github.com/prometheus/prometheus/cmd/promtool ;;
    *) echo "tools.sh: unknown tool '$tool' (known: ${known[*]})" >&2; exit 2 ;;
  esac
done
