#!/usr/bin/env bash
# Builds the envtest control plane (kube-apiserver and etcd, plus kubectl for
# `make dev` users) from source through
# the Go module proxy, because setup-envtest downloads prebuilt binaries and that
# does not work on air-gapped machines. Prints the folder holding the binaries;
# progress goes to stderr. A preset KUBEBUILDER_ASSETS wins, and a finished
# build is cached outside the repository, so later runs return at once.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"

if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
  if [[ -x "${KUBEBUILDER_ASSETS}/kube-apiserver" && -x "${KUBEBUILDER_ASSETS}/etcd" ]]; then
    echo "${KUBEBUILDER_ASSETS}"
    exit 0
  fi
  echo "KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS} lacks kube-apiserver or etcd" >&2
  exit 1
fi

cache_root="${XDG_CACHE_HOME:-${HOME}/.cache}/involveo-webhooks/envtest"
dest="${cache_root}/k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}"
if [[ -x "${dest}/kube-apiserver" && -x "${dest}/etcd" && -x "${dest}/kubectl" ]]; then
  echo "${dest}"
  exit 0
fi

log() { printf 'envtest-assets: %s\n' "$*" >&2; }

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
staging="${work}/out"
mkdir -p "${staging}"

# Debug info and the symbol table are dropped: the binaries only serve tests,
# and it shaves a third off link time and size.
build_flags=(-trimpath -ldflags=-s\ -w)
export GOFLAGS="-mod=mod"
export CGO_ENABLED=0

log "building kube-apiserver and kubectl v${K8S_VERSION} from k8s.io/kubernetes (first run: ~10 min on 2 cores)"
apiserver_mod="${work}/kube-apiserver"
mkdir -p "${apiserver_mod}"
k8s_gomod="$(cd "${apiserver_mod}" && go mod download -json "k8s.io/kubernetes@v${K8S_VERSION}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
minor="${K8S_VERSION#*.}"
staging_version="v0.${minor}"
{
  echo "module involveo.local/envtest/kube-apiserver"
  echo
  echo "go $(go env GOVERSION | sed 's/^go//')"
  echo
  echo "require k8s.io/kubernetes v${K8S_VERSION}"
  echo
  # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them
  # with local folders; a replace in a dependency is ignored, so we point each
  # at its published release instead.
  sed -n 's#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/.*#\1#p' "${k8s_gomod}" |
    while read -r m; do echo "replace ${m} => ${m} ${staging_version}"; done
} >"${apiserver_mod}/go.mod"
(
  cd "${apiserver_mod}"
  go get "k8s.io/kubernetes/cmd/kube-apiserver@v${K8S_VERSION}" >&2
  if [[ -x "${dest}/kube-apiserver" ]]; then
    cp "${dest}/kube-apiserver" "${staging}/"
  else
    go build "${build_flags[@]}" -o "${staging}/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
  fi
  log "building kubectl"
  go get "k8s.io/kubernetes/cmd/kubectl@v${K8S_VERSION}" >&2
  go build "${build_flags[@]}" -o "${staging}/kubectl" k8s.io/kubernetes/cmd/kubectl
)

log "etcd v${ETCD_VERSION} from go.etcd.io/etcd/server/v3"
etcd_mod="${work}/etcd"
mkdir -p "${etcd_mod}"
cat >"${etcd_mod}/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
if [[ -x "${dest}/etcd" ]]; then
  cp "${dest}/etcd" "${staging}/"
else (
  cd "${etcd_mod}"
  go mod init involveo.local/envtest/etcd >/dev/null 2>&1
  go get "go.etcd.io/etcd/server/v3@v${ETCD_VERSION}" >&2
  go mod tidy >&2
  go build "${build_flags[@]}" -o "${staging}/etcd" .
) fi

# Each binary is renamed into place, so a test already running from the
# folder keeps working and a reader never sees a half-written file.
mkdir -p "${dest}"
for bin in "${staging}"/*; do
  mv -f "${bin}" "${dest}/"
done
log "assets ready in ${dest}"
echo "${dest}"
