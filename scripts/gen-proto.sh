#!/usr/bin/env bash
# Regenerate the Python modules for every .proto in ztunnel_py/proto (messages and .pyi stubs;
# no gRPC stubs: our servers and clients wire their methods with grpcio's generic handlers), then
# rewrite the generated cross-file imports so they resolve inside the package:
# protoc emits `import workload_pb2`, we need `from ztunnel_py.proto import workload_pb2`.
# Imports of google.protobuf's well-known types are left alone.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${ZTUNNEL_VENV:-$repo/.venv}"
proto_dir="$repo/ztunnel_py/proto"
cd "$proto_dir"

shopt -s nullglob
protos=(*.proto)
if [ ${#protos[@]} -eq 0 ]; then
    echo "no .proto files in $proto_dir" >&2
    exit 1
fi

rm -f ./*_pb2.py ./*_pb2.pyi
"$venv/bin/python" -m grpc_tools.protoc -I. \
    --python_out=. --pyi_out=. "${protos[@]}"

modules=()
for p in "${protos[@]}"; do
    modules+=("${p%.proto}_pb2")
done
pattern="$(IFS='|'; echo "${modules[*]}")"
for f in ./*_pb2.py ./*_pb2.pyi; do
    sed -i -E \
        -e "s/^import (${pattern}) as /from ztunnel_py.proto import \1 as /" \
        -e "s/^import (${pattern})$/from ztunnel_py.proto import \1/" \
        -e "s/^from (${pattern}) import /from ztunnel_py.proto.\1 import /" \
        "$f"
done
echo "generated: ${modules[*]}"
