#!/usr/bin/env bash
# Enforces DESIGN.md §2's include rules on the source tree:
#  1. folder dependencies: core <- kernels <- model <- {actor, rollout, reward, distill, learner,
#     store, comm} ; nothing includes cli/; core includes nothing of ours but core.
#  2. only *_service.*, store/rocksdb*, cli/ (and tests, bench, fuzz) include gRPC, RocksDB,
#     generated *.pb.h headers or other protos/ headers.
#  3. only kernels/cuda/ and comm/nccl* include CUDA or NCCL headers.
# Prints every violation as file:line and exits 1 if there is any.
set -uo pipefail
cd "$(dirname "$0")/.."

declare -A allowed=(
  [core]="core"
  [kernels]="core kernels"
  [model]="core kernels model"
  [actor]="core kernels model actor"
  [rollout]="core kernels model actor rollout reward store"
  [reward]="core kernels model actor reward"
  [distill]="core kernels model actor distill"
  [learner]="core kernels model actor rollout distill learner store comm"
  [store]="core kernels model store"
  [comm]="core kernels model comm"
  [protos]="core protos"
)
ours="core|kernels|model|actor|rollout|reward|distill|learner|store|comm|protos|cli"
violations=0

report() {
  echo "layering: $1"
  violations=$((violations + 1))
}

while IFS= read -r -d '' file; do
  folder=${file%%/*}
  base=$(basename "$file")
  while IFS=: read -r line include; do
    target=$(sed -E 's/.*#include *[<"]([^">]+)[">].*/\1/' <<<"$include")
    top=${target%%/*}
    # 1. folder dependencies
    if [[ -n "${allowed[$folder]:-}" && "$target" == */* && "$top" =~ ^($ours)$ ]]; then
      # protos/ headers are the gRPC layer: reachable wherever gRPC may be included (rule 2).
      if [[ " ${allowed[$folder]} " != *" $top "* && ! ( "$top" == "protos" && ( "$base" == *_service.* || "$file" == store/rocksdb* ) ) ]]; then
        report "$file:$line includes $target ($folder may include only: ${allowed[$folder]})"
      fi
    fi
    # 2. gRPC / RocksDB / generated protobuf headers
    if [[ "$target" == grpc* || "$target" == rocksdb/* || "$target" == *.pb.h || "$target" == google/protobuf/* ]]; then
      if [[ "$base" != *_service.* && "$file" != store/rocksdb* && "$folder" != cli && "$folder" != protos ]]; then
        report "$file:$line includes $target (only *_service.*, store/rocksdb*, cli/ may)"
      fi
    fi
    # 3. CUDA / NCCL headers
    if [[ "$target" =~ ^(cuda|cuda_runtime|cuda_bf16|cuda_fp16|cuda_fp8|cublas|cublasLt|nccl|cub/|cute/|cutlass/) ]]; then
      if [[ "$file" != kernels/cuda/* && "$file" != comm/nccl* ]]; then
        report "$file:$line includes $target (only kernels/cuda/ and comm/nccl* may)"
      fi
    fi
  done < <(grep -n -E '^\s*#\s*include' "$file" | sed -E 's/^([0-9]+):/\1:/')
done < <(find core kernels model actor rollout reward distill learner store comm protos \
  -type f \( -name '*.h' -o -name '*.cc' -o -name '*.cu' -o -name '*.cuh' \) -print0 2>/dev/null)

# Nothing outside cli/ includes cli/.
while IFS= read -r hit; do
  report "$hit (nothing outside cli/ may include cli/)"
done < <(grep -rn -E '#\s*include\s*"cli/' --include='*.h' --include='*.cc' \
  core kernels model actor rollout reward distill learner store comm protos 2>/dev/null)

if ((violations > 0)); then
  echo "layering: $violations violation(s); see DESIGN.md §2"
  exit 1
fi
echo "layering: ok"
