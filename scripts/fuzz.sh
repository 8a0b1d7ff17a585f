#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) into build-fuzz/ and runs one of them.
#
#   scripts/fuzz.sh                         build every target
#   scripts/fuzz.sh TARGET [SECONDS] [ARGS]  build TARGET and fuzz it for SECONDS (default 60) in
#                                            one process; ARGS go to libFuzzer (e.g. -jobs=2)
#   scripts/fuzz.sh --list                  list the targets
#
# A target NAME is the sources listed for it in TARGETS below (its fuzz/*_fuzz.cc first) linked
# with every core/*.cc. Seeds live in fuzz/corpus/NAME/ (small, committed); an optional dictionary
# in fuzz/NAME.dict. What the fuzzer finds goes to fuzz/corpus-run/NAME/ and crashing inputs to
# build-fuzz/artifacts/NAME/, both git-ignored. To add a target: write fuzz/WHAT_fuzz.cc, add a
# line to TARGETS, commit a few seeds.
set -euo pipefail

# NAME -> the fuzz source, then any sources outside core/ it needs (relative to the repo root);
# a .proto source is compiled with protoc and links protobuf.
declare -A TARGETS=(
  [safetensors]="fuzz/safetensors_header_fuzz.cc"
  [trajectory_record]="fuzz/trajectory_record_fuzz.cc store/trajectory.cc store/rocksdb_codec.cc protos/trajectory.proto"
  [tokenizer_json]="fuzz/tokenizer_json_fuzz.cc actor/added_tokens.cc actor/bpe.cc actor/byte_level.cc actor/deepseek_v4_tokens.cc actor/pretokenizer.cc actor/tokenizer.cc actor/tokenizer_json.cc actor/unicode.cc actor/unicode_class_table.cc"
  [dsml_parse]="fuzz/dsml_parse_fuzz.cc actor/chat_encoding.cc actor/chat_parse.cc actor/dsml.cc actor/message.cc actor/py_json.cc actor/unicode.cc actor/unicode_class_table.cc"
  [sft_jsonl]="fuzz/sft_jsonl_fuzz.cc learner/sft_data.cc learner/synthetic_tasks.cc"
  [model_config]="fuzz/model_config_fuzz.cc model/config.cc model/params.cc"
  [weight_stream]="fuzz/weight_stream_fuzz.cc rollout/weight_stream.cc"
)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${ROOT}/build-fuzz"
CXX="${CXX_FUZZ:-clang++}"
LAUNCHER="$(command -v ccache || true)"
SANITIZERS="address,undefined"
CXXFLAGS=(-std=c++20 -O1 -g -fno-omit-frame-pointer -fsanitize="${SANITIZERS}"
          -fno-sanitize-recover=undefined -I"${ROOT}" -I"${BUILD}/gen" -Wall -Wno-unused-parameter)
# abseil from Debian: the libraries behind status, statusor, str_format, time, hash maps and
# Mutex.
ABSL_LIBS="$(pkg-config --libs absl_status absl_statusor absl_strings absl_str_format absl_time \
  absl_flat_hash_map absl_flat_hash_set absl_hash absl_synchronization)"

usage() {
  sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 2
}

# Compiles one source to an object under build-fuzz/obj (ccache makes unchanged files cheap).
compile() {
  local source="$1" object="${BUILD}/obj/${1%.cc}.o"
  mkdir -p "$(dirname "${object}")"
  ${LAUNCHER} "${CXX}" "${CXXFLAGS[@]}" -fsanitize=fuzzer-no-link -c "${ROOT}/${source}" \
    -o "${object}"
  echo "${object}"
}

build_target() {
  local name="$1" sources=() objects=() source extra_libs=""
  for source in $(cd "${ROOT}" && ls core/*.cc) ${TARGETS[${name}]}; do
    if [[ "${source}" == *.proto ]]; then
      # Generated before anything compiles: the other sources include its header.
      mkdir -p "${BUILD}/gen"
      protoc --proto_path="${ROOT}" --cpp_out="${BUILD}/gen" "${ROOT}/${source}"
      sources+=("build-fuzz/gen/${source%.proto}.pb.cc")
      extra_libs="$(pkg-config --libs protobuf)"
    else
      sources+=("${source}")
    fi
  done
  for source in "${sources[@]}"; do
    objects+=("$(compile "${source}")")
  done
  # shellcheck disable=SC2086  # ABSL_LIBS and extra_libs are lists of flags
  "${CXX}" "${CXXFLAGS[@]}" -fsanitize=fuzzer "${objects[@]}" ${ABSL_LIBS} ${extra_libs} \
    -lpthread -o "${BUILD}/${name}_fuzz"
  echo "built ${BUILD}/${name}_fuzz" >&2
}

run_target() {
  local name="$1" seconds="$2"
  shift 2
  local run_corpus="${ROOT}/fuzz/corpus-run/${name}" seeds="${ROOT}/fuzz/corpus/${name}"
  local artifacts="${BUILD}/artifacts/${name}/" dict=()
  mkdir -p "${run_corpus}" "${artifacts}"
  [[ -f "${ROOT}/fuzz/${name}.dict" ]] && dict=(-dict="${ROOT}/fuzz/${name}.dict")
  # The first corpus directory receives new inputs; the committed seeds are only read.
  "${BUILD}/${name}_fuzz" "${run_corpus}" "${seeds}" -max_total_time="${seconds}" \
    -artifact_prefix="${artifacts}" -print_final_stats=1 "${dict[@]}" "$@"
}

command -v "${CXX}" >/dev/null || { echo "${CXX} not found: run scripts/setup.sh" >&2; exit 1; }
mkdir -p "${BUILD}"
case "${1:-}" in
  -h|--help) usage ;;
  --list) printf '%s\n' "${!TARGETS[@]}" | sort ;;
  "") for name in $(printf '%s\n' "${!TARGETS[@]}" | sort); do build_target "${name}"; done ;;
  *)
    name="$1"
    [[ -v "TARGETS[${name}]" ]] || { echo "unknown target '${name}' (see --list)" >&2; exit 2; }
    seconds="${2:-60}"
    shift $(( $# >= 2 ? 2 : 1 ))
    build_target "${name}"
    run_target "${name}" "${seconds}" "$@"
    ;;
esac
