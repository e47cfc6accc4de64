#!/bin/bash
# Build llama.cpp's Python binding and its OpenAI-compatible server into .venv-llama, the
# peer of benchmarks/bench_serve.py (and of the GGUF decoding benchmarks). No wheel is
# published for this platform, so pip compiles llama.cpp from the sdist with cmake and a
# C++ compiler: about 10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
$PYTHON -m venv .venv-llama
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
  .venv-llama/bin/pip install -q "llama-cpp-python[server]==0.3.36"
.venv-llama/bin/python -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
