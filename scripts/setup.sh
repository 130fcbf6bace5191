#!/usr/bin/env bash
# Idempotent set-up: creates .venv, installs the pinned stack, redis-server and checks Java.
# Usage: bash scripts/setup.sh            (CPU, default)
#        RECSYS_GPU=1 bash scripts/setup.sh  (swap in the CUDA fbgemm-gpu build)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
STAMP=.venv/.setup-stamp
HASH=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)

check_java() {
  if ! command -v java >/dev/null 2>&1; then
    echo "setup: Java 17+ is required by Spark but 'java' is not on PATH (apt-get install -y openjdk-17-jre-headless)" >&2
    exit 1
  fi
  local major
  major=$(java -version 2>&1 | head -1 | sed -E 's/.*version "([0-9]+).*/\1/')
  if [ "${major:-0}" -lt 17 ]; then
    echo "setup: Java 17+ is required by Spark, found Java ${major}" >&2
    exit 1
  fi
}

# install_debian <command> <package> <what skips without it>
install_debian() {
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing $2" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  else
    echo "setup: $1 not found and cannot install $2 (not root); $3 will be skipped" >&2
  fi
}

check_java
install_debian redis-server redis-server "Redis integration tests"
# headless Chromium renders the evaluation report in its test (screenshot, images present)
install_debian chromium chromium "the report rendering test"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  exit 0
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
$PIP install --upgrade pip wheel >/dev/null
# torch first, pinned, so nothing later pulls a CUDA build.
$PIP install torch==2.13.0
if [ "${RECSYS_GPU:-0}" = "1" ]; then
  $PIP install fbgemm-gpu==1.8.0
else
  $PIP install fbgemm-gpu-cpu==1.8.0
fi
# torchrec names the CUDA fbgemm-gpu as a dependency; install it without deps, then its real needs.
$PIP install --no-deps torchrec==1.8.0
# dev: pytest, ruff; bench: psutil (benchmarks/); serving: grpc, protobuf, prometheus-client
# (serving/); retrieval: faiss-cpu (recsys.retrieval). The tests need all of them.
EXTRAS="dev,bench,serving,retrieval"
if [ "${RECSYS_GPU:-0}" = "1" ]; then $PIP install -e ".[$EXTRAS,gpu]"; else $PIP install -e ".[$EXTRAS,cpu]"; fi
echo "$HASH" > "$STAMP"
echo "setup: ready (.venv)" >&2
