#!/usr/bin/env bash
# Waits (up to 60 s) until the project's CRDs are Established. `kubectl wait --for=condition=...`
# fails at once, instead of waiting, on a CRD the API server has not given any condition yet, so
# it is retried until the deadline.
set -euo pipefail
crds=(crd/externalaudiences.aep.audience-operator.dev crd/audienceactivations.aep.audience-operator.dev)
deadline=$(( $(date +%s) + ${CRD_WAIT_SECS:-60} ))
until kubectl wait --for=condition=Established --timeout=5s "${crds[@]}" >/dev/null 2>&1; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    kubectl wait --for=condition=Established --timeout=1s "${crds[@]}"
    exit 1
  fi
  sleep 0.5
done
