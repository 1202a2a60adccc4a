#!/usr/bin/env bash
# Build an OCI image of a Bento with `bentoml containerize`, using the first backend that answers
# (docker with a running daemon, podman or buildah; --backend to choose). CPU image by default;
# --gpu builds the CUDA variant. Tags <name>-<variant>:<version> and <name>-<variant>:latest.
#
#   scripts/build_image.sh --model kronos-small:latest            # -> kronos-cpu:<version>
#   scripts/build_image.sh --model kronos-small:latest --gpu      # CUDA base, KRONOS_DEVICE=cuda
#   scripts/build_image.sh --bento kronos:abc123                  # containerize an existing Bento
#
# Run it:   docker run -p 3000:3000 kronos:<version>
# (metrics on /metrics, tracing with -e KRONOS_OTLP_ENDPOINT=http://collector:4318/v1/traces)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
BENTOML=${BENTOML:-.venv/bin/bentoml}
variant=cpu bento="" models=() extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --gpu) variant=gpu ;;
    --bento) bento=$2; shift ;;
    --model) models+=(--model "$2"); shift ;;
    --backend) BACKEND=$2; shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
# A backend that answers: a docker CLI without a reachable daemon is not one.
answers() {
  case "$1" in
    docker) timeout 20 docker info >/dev/null 2>&1 ;;
    podman) timeout 20 podman info >/dev/null 2>&1 ;;
    buildah) timeout 20 buildah info >/dev/null 2>&1 ;;
    *) return 1 ;;
  esac
}
if [ -z "${BACKEND:-}" ]; then
  for candidate in docker podman buildah; do
    if command -v "$candidate" >/dev/null 2>&1 && answers "$candidate"; then BACKEND=$candidate; break; fi
    command -v "$candidate" >/dev/null 2>&1 && echo "$candidate is installed but does not answer ($candidate info failed): skipped" >&2
  done
fi
[ -n "${BACKEND:-}" ] || { echo "no working container backend (docker with a running daemon, podman or buildah)" >&2; exit 1; }
if [ -z "$bento" ]; then
  bento=$("$PYTHON" scripts/build_bento.py --variant "$variant" ${models[@]+"${models[@]}"})
fi
# <name>-<variant>:<version>, also tagged :latest (what deploy/compose.*.yaml run by default).
image="${bento%%:*}-${variant}:${bento##*:}"
latest="${bento%%:*}-${variant}:latest"
# bentoml 1.4 only reads the Dockerfile template from below the working directory, and it
# builds in a temporary copy of the Bento: keep that copy under the repository.
mkdir -p build/tmp
export TMPDIR="$PWD/build/tmp"
# podman/buildah write OCI images by default, which drop HEALTHCHECK: ask for the docker format.
export BUILDAH_FORMAT=${BUILDAH_FORMAT:-docker}
echo "containerizing $bento as $image with $BACKEND" >&2
"$BENTOML" containerize "$bento" --backend "$BACKEND" --image-tag "$image" --image-tag "$latest" ${extra[@]+"${extra[@]}"}
echo "$image"
