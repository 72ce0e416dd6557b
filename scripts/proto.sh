#!/usr/bin/env bash
# Generates the Python code of the viewfinder contracts (proto/viewfinder/v1)
# into the shared package libs/viewfinder/src/viewfinder/v1:
#   *_pb2.py        messages            (protoc's python generator)
#   *_pb2.pyi       typed message stubs (mypy-protobuf: protoc-gen-mypy)
#   *_pb2_grpc.py   gRPC stubs/servicers (grpc_tools' grpc_python plugin)
#   *_pb2_grpc.pyi  typed gRPC stubs    (mypy-protobuf: protoc-gen-mypy_grpc)
#   __init__.py     package marker
# The whole v1/ folder is generated: never edit it by hand.
#
# Usage: scripts/proto.sh                    regenerate in place
#        scripts/proto.sh --check            fail with a diff if the committed output is stale
#        scripts/proto.sh --update-baseline  rebuild proto/baseline.binpb, the image that
#                                            `buf breaking` compares against (do this only
#                                            when a contract version is released)
# Tools come from the virtual environment at ${VENV:-.venv}.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${VENV:-.venv}"
PYTHON="$VENV/bin/python"
OUT_DIR="libs/viewfinder/src/viewfinder/v1"
PROTO_ROOT="proto"

mode="generate"
case "${1:-}" in
  "") ;;
  --check) mode="check" ;;
  --update-baseline) mode="baseline" ;;
  *) echo "usage: $0 [--check | --update-baseline]" >&2; exit 2 ;;
esac

for tool in "$PYTHON" "$VENV/bin/protoc-gen-mypy" "$VENV/bin/protoc-gen-mypy_grpc" "$VENV/bin/buf"; do
  if [[ ! -x "$tool" ]]; then
    echo "error: $tool not found; run 'make install' (or set VENV)" >&2
    exit 1
  fi
done

if [[ "$mode" == "baseline" ]]; then
  "$VENV/bin/buf" build --exclude-source-info -o "$PROTO_ROOT/baseline.binpb"
  echo "wrote $PROTO_ROOT/baseline.binpb"
  exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Sorted, so that the output does not depend on the file system's order.
mapfile -t protos < <(find "$PROTO_ROOT/viewfinder/v1" -name '*.proto' | LC_ALL=C sort)

"$PYTHON" -m grpc_tools.protoc \
  -I "$PROTO_ROOT" \
  --plugin="protoc-gen-mypy=$VENV/bin/protoc-gen-mypy" \
  --plugin="protoc-gen-mypy_grpc=$VENV/bin/protoc-gen-mypy_grpc" \
  --python_out="$tmp" \
  --grpc_python_out="$tmp" \
  --mypy_out="quiet:$tmp" \
  --mypy_grpc_out="quiet,generate_concrete_servicer_stubs:$tmp" \
  "${protos[@]}"

generated="$tmp/viewfinder/v1"
# Files without a service (messages and events only) need no gRPC modules.
for proto in "${protos[@]}"; do
  if ! grep -q '^service ' "$proto"; then
    name="$(basename "$proto" .proto)"
    rm -f "$generated/${name}_pb2_grpc.py" "$generated/${name}_pb2_grpc.pyi"
  fi
done
{
  echo '"""Generated from proto/viewfinder/v1 by scripts/proto.sh. Do not edit.'
  echo
  echo 'Modules: messages in <name>_pb2, gRPC stubs and servicers in <name>_pb2_grpc, for'
  for proto in "${protos[@]}"; do
    name="$(basename "$proto" .proto)"
    echo "$name"
  done | paste -sd ',' | sed 's/,/, /g; s/$/."""/'
} > "$generated/__init__.py"

if [[ "$mode" == "check" ]]; then
  if ! diff -ruN -x __pycache__ "$OUT_DIR" "$generated"; then
    echo "error: $OUT_DIR is stale: run 'make proto' (scripts/proto.sh) and commit the result" >&2
    exit 1
  fi
  echo "generated code in $OUT_DIR is up to date"
  exit 0
fi

rm -rf "$OUT_DIR"
mkdir -p "$(dirname "$OUT_DIR")"
cp -r "$generated" "$OUT_DIR"
echo "generated $(find "$OUT_DIR" -type f | wc -l) files in $OUT_DIR"
