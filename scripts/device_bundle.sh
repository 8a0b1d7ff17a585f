#!/usr/bin/env bash
# Builds v4rl with CUDA for the H200 (sm_90a) and packs the `v4rl` binary, the `gpu`-labelled test
# executables, the CUDA benchmarks (bench/cuda_*) and their non-system shared libraries into
# ./device_bundle (git-ignored), and the same compressed into ./device_bundle_packed/bundle.tar.xz
# (~14 MB for the full set, which uncompressed passes `carry`'s 64 MiB; ALL_BINARIES=1 packs
# every test and benchmark executable instead). Binaries are stripped.
#
#   scripts/device_bundle.sh                      # here, on the CPU machine
#   tar -xJf device_bundle_packed/bundle.tar.xz   # there, with carry ["device_bundle_packed"]
#   bash device_bundle/run_gpu_tests.sh           # there: runs every `gpu`-labelled test
#   device_bundle/env.sh v4rl version             # there: any binary with the right paths
#
# glibc, libstdc++, libgcc, CUDA and NCCL libraries are left out: the GPU machine has its own
# (env.sh points LD_LIBRARY_PATH at CUDA and at torch's NCCL there).
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build-cuda}
BUNDLE=${BUNDLE_DIR:-device_bundle}  # another name lets engineers keep separate bundles
export PATH=/usr/local/cuda/bin:$PATH

cmake -S . -B "$BUILD_DIR" -G Ninja -DV4RL_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
  -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD_DIR" -j "$(nproc)" ${BUNDLE_TARGETS:+--target $BUNDLE_TARGETS}

rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/bin" "$BUNDLE/lib"

# gpu-labelled tests, by executable name, from ctest's own listing.
(cd "$BUILD_DIR" && ctest -L gpu --show-only=json-v1) | python3 -c '
import json, os, sys
for test in json.load(sys.stdin)["tests"]:
    if test.get("command"):  # tests whose executable this build has (BUNDLE_TARGETS)
        print(os.path.basename(test["command"][0]))' > "$BUNDLE/gpu_tests.txt"

# The executables the build produced (skip CMake's own probes), filtered unless ALL_BINARIES=1.
mapfile -t binaries < <(find "$BUILD_DIR" -type f -executable -not -path '*/CMakeFiles/*' \
  -not -name '*.so*' -not -name '*.sh' | sort)
for binary in "${binaries[@]}"; do
  name=$(basename "$binary")
  if [[ "${ALL_BINARIES:-0}" != 1 && "$name" != v4rl && "$name" != cuda_* ]] &&
     ! grep -qx "$name" "$BUNDLE/gpu_tests.txt"; then
    continue
  fi
  cp "$binary" "$BUNDLE/bin/"
done

is_system_library() {
  [[ "$1" =~ ^(linux-vdso|ld-linux|libc\.|libm\.|libdl\.|librt\.|libpthread\.|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas|libnccl|libnvidia|libnvrtc) ]]
}
for binary in "$BUNDLE"/bin/*; do
  ldd "$binary" | awk '/=> \// {print $1, $3}' | while read -r name path; do
    is_system_library "$name" && continue
    [[ -e "$BUNDLE/lib/$name" ]] || cp -L "$path" "$BUNDLE/lib/$name"
  done
done

cat > "$BUNDLE/env.sh" <<'ENV'
#!/usr/bin/env bash
# Runs a bundled binary with the bundle's libraries, CUDA and torch's NCCL on the library path.
here=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH="$here/lib:/usr/local/cuda/lib64:/opt/torch/.venv/lib/python3.12/site-packages/nvidia/nccl/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$here/bin:$PATH"
exec "$@"
ENV
cat > "$BUNDLE/run_gpu_tests.sh" <<'RUN'
#!/usr/bin/env bash
# Runs every gpu-labelled test of the bundle; exits non-zero if any fails.
here=$(cd "$(dirname "$0")" && pwd)
failed=0
failures=()
while read -r test; do
  echo "=== $test"
  if ! "$here/env.sh" "$here/bin/$test"; then
    failed=$((failed + 1))
    failures+=("$test")
  fi
done < "$here/gpu_tests.txt"
echo "gpu tests: $(wc -l < "$here/gpu_tests.txt") run, $failed failed ${failures[*]:-}"
exit $((failed > 0))
RUN
chmod +x "$BUNDLE/env.sh" "$BUNDLE/run_gpu_tests.sh"
strip --strip-unneeded "$BUNDLE"/bin/*
packed="${BUNDLE}_packed"
rm -rf "$packed"
mkdir -p "$packed"
tar -cf - "$BUNDLE" | xz -T0 -6 > "$packed/bundle.tar.xz"
echo "bundle: $(ls "$BUNDLE/bin" | wc -l) binaries, $(ls "$BUNDLE/lib" | wc -l) libraries, $(du -sh "$BUNDLE" | cut -f1)"
echo "packed: $packed/bundle.tar.xz, $(du -sh "$packed/bundle.tar.xz" | cut -f1)"
echo "on the GPU machine (carry [\"$packed\"]): tar -xJf $packed/bundle.tar.xz && bash $BUNDLE/run_gpu_tests.sh"
