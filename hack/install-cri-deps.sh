#!/usr/bin/env bash
# CNI plugins and crictl for the CRI integration test (filled in with the Kubernetes path).
set -euo pipefail
