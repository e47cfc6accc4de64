#!/bin/bash
# Build llama.cpp's Python binding and its OpenAI-compatible server into .venv-llama, the
# peer of benchmarks/bench_serve.py (and of the GGUF decoding benchmarks). No wheel is
# published for this platform, so pip compiles llama.cpp from the sdist with cmake and a
# C++ compiler: about 7 minutes on 2 cores. The default native build (-march=native)
# crashed in llama_decode on an Intel Xeon with AMX (segmentation fault); the portable
# AVX2 build below runs there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
$PYTHON -m venv .venv-llama
CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"} \
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
  .venv-llama/bin/pip install -q "llama-cpp-python[server]==0.3.36"
.venv-llama/bin/python -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
