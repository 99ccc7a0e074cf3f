#!/usr/bin/env bash
# GPU check for the inference engines and the daemon, on a machine with an NVIDIA GPU and a CUDA
# build of PyTorch. Run from anywhere; STEPS picks what runs, in the order given:
#
#   STEPS="daemon" bash benchmarks/gpu_check.sh          # about 6 min
#   STEPS="tests engines" bash benchmarks/gpu_check.sh   # about 6 min
#   PYTHON=/path/to/python bash benchmarks/gpu_check.sh  # all steps
#
# daemon   the daemon end to end on 4096 x 4096 uint16 frames (the 60 frames/s target), eager
#          fp16 and compiled, with `temseg bench` (bare engine, naive loop, daemon burst, paced),
#          then compiled again with particles measured in worker processes;
# host     the host-side cost per 4096 px frame and its spread over 1, 4 and 8 threads
#          (benchmarks/bench_host.py), particle labelling on the host and, with CuPy, on the
#          GPU (benchmarks/bench_labelling.py), then the whole daemon at 4096 px with a stand-in
#          engine of 5.5 ms (benchmarks/bench_ceiling.py), with the daemon's GIL switch
#          interval, with Python's default, with particles measured in worker processes, and
#          with float maps thresholded on the host (--host-path) instead of masks from the
#          device: the frames/s this host's CPUs allow; with py-spy on PATH, also the GIL each
#          host step holds per frame;
# tests    the gpu-marked engine tests (CUDA fp16 + channels_last, torch.compile, ONNX Runtime
#          CUDA and TensorRT when installed) against PyTorch fp32 on the CPU, and masks made on
#          the GPU (tests/test_device_frame.py) against the host path;
# engines  frames/s of PyTorch eager fp32, eager fp16 channels_last, compiled fp16 (and TensorRT
#          fp16 when installed) at the sizes in SIZES.
# Each step has its own time limit; FRAMES sets the daemon burst length (default 60).
# Nothing is installed into the environment; caches go to a temporary directory that is
# removed at the end. On a machine without network whose Python lacks some of the daemon's
# packages (pyzmq, watchdog, sqlalchemy, imagecodecs, py-spy), WHEELS=/folder/of/wheels
# installs those wheels into that temporary directory first.
set -u
PY=${PYTHON:-python3}
STEPS=${STEPS:-daemon host tests engines}
SIZES=${SIZES:-512 4096}
FRAMES=${FRAMES:-60}
WHEELS=${WHEELS:+$(cd "$WHEELS" && pwd)}
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export XDG_CACHE_HOME
XDG_CACHE_HOME=$(mktemp -d)
trap 'rm -rf "$XDG_CACHE_HOME"' EXIT
if [ -n "${WHEELS:-}" ]; then
    "$PY" -m pip install --quiet --no-index --no-deps --target "$XDG_CACHE_HOME/site" \
        "$WHEELS"/*.whl || exit 1
    export PYTHONPATH="$PYTHONPATH:$XDG_CACHE_HOME/site"
    export PATH="$XDG_CACHE_HOME/site/bin:$PATH"
fi

"$PY" - <<'PYEOF' || exit 1
import importlib.util, os, sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__}: no CUDA device")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}, "
      f"{len(os.sched_getaffinity(0))} CPU cores")
for name in ("onnx", "onnxruntime", "tensorrt", "safetensors", "scipy", "typer", "pytest", "zmq",
             "watchdog", "sqlalchemy", "imagecodecs"):
    print(f"  {name}: {'yes' if importlib.util.find_spec(name) else 'missing'}")
PYEOF

status=0
for step in $STEPS; do
    case $step in
    daemon)
        echo "== daemon at 4096 x 4096, eager fp16 =="
        timeout 150 "$PY" -m temseg bench --size 4096 --frames "$FRAMES" --device cuda \
            --backend torch || status=1
        echo "== daemon at 4096 x 4096, compiled fp16 =="
        timeout 240 "$PY" -m temseg bench --size 4096 --frames "$FRAMES" --device cuda \
            --backend torch --compile || status=1
        echo "== daemon at 4096 x 4096, compiled fp16, particles in worker processes =="
        timeout 180 "$PY" -m temseg bench --size 4096 --frames "$FRAMES" --device cuda \
            --backend torch --compile --segmenter-processes || status=1
        ;;
    host)
        echo "== host-side cost per 4096 px frame =="
        timeout 120 "$PY" benchmarks/bench_host.py --size 4096 --threads 1 4 8 || status=1
        echo "== particles of a 4096 px mask: temseg, OpenCV, cc3d, cupyx where installed =="
        timeout 120 "$PY" benchmarks/bench_labelling.py --size 4096 --repeats 9 || status=1
        if command -v py-spy >/dev/null; then
            echo "== GIL held per step (py-spy) =="
            timeout 120 "$PY" benchmarks/bench_host.py --size 4096 --repeats 30 --gil || status=1
        fi
        echo "== host ceiling: the daemon at 4096 px with a 5.5 ms stand-in engine =="
        timeout 150 "$PY" benchmarks/bench_ceiling.py --size 4096 --frames 60 || status=1
        timeout 150 "$PY" benchmarks/bench_ceiling.py --size 4096 --frames 60 \
            --switch-interval-ms 5 || status=1
        timeout 150 "$PY" benchmarks/bench_ceiling.py --size 4096 --frames 60 \
            --segmenter-processes || status=1
        timeout 150 "$PY" benchmarks/bench_ceiling.py --size 4096 --frames 60 \
            --host-path || status=1
        ;;
    tests)
        echo "== gpu tests =="
        timeout 420 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_engines.py \
            tests/test_device_frame.py || status=1
        ;;
    engines)
        echo "== engine benchmark (batch 1, ms per frame end to end) =="
        # shellcheck disable=SC2086
        timeout 300 "$PY" benchmarks/bench_engines.py --device cuda --sizes $SIZES --repeats 10 \
            --cache "$XDG_CACHE_HOME/engines" || status=1
        ;;
    *)
        echo "unknown step $step (daemon, host, tests, engines)" >&2
        status=2
        ;;
    esac
done
exit $status
