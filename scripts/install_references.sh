#!/usr/bin/env bash
# The test references that cannot share the test venv, for the tests that run them (each skips,
# saying so, where its reference is missing):
# - optimum (ORTModelForCausalLM): its transformers < 4.58 cannot sit beside transformers 5,
#   so it gets .venv-optimum;
# - transformers.js in Node: .references/node (--ignore-scripts: its CPU runtime is in the
#   package; the install script fetches from a host CI cannot reach).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-optimum
.venv-optimum/bin/pip install --quiet torch==2.13.0
.venv-optimum/bin/pip install --quiet "optimum-onnx[onnxruntime]"
if command -v npm > /dev/null; then
    mkdir -p .references/node
    (cd .references/node && npm init -y > /dev/null && \
        npm install --silent --ignore-scripts @huggingface/transformers)
else
    echo "npm not found: the transformers.js test will skip, saying so"
fi
