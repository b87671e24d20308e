#!/usr/bin/env bash
# Regenerates deploy/argocd/argocd-cm-patch.yaml from deploy/argocd/health.lua (the test
# tests/gitops_health.rs fails while the two differ).
#
#   hack/argocd-health/gen-cm-patch.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
lua="$root/deploy/argocd/health.lua"
out="$root/deploy/argocd/argocd-cm-patch.yaml"
# A YAML literal block keeps the script byte for byte only without tabs or trailing blanks.
if grep -qP '\t| $' "$lua"; then
  echo "gen-cm-patch: $lua has tabs or trailing blanks; remove them first" >&2
  exit 1
fi
{
  cat <<'HEAD'
# Generated from deploy/argocd/health.lua by hack/argocd-health/gen-cm-patch.sh: edit health.lua
# and rerun the script. Adds the health check of the operator's kinds (ExternalAudience,
# AudienceActivation: one script, the same kstatus conditions) to Argo CD (argocd-cm, which
# Argo CD reads live, no restart needed):
#
#   kubectl -n argocd patch configmap argocd-cm --type merge --patch-file deploy/argocd/argocd-cm-patch.yaml
#
# or list this file under `patches:` of the kustomization that installs Argo CD.
apiVersion: v1
kind: ConfigMap
metadata:
  name: argocd-cm
  namespace: argocd
data:
HEAD
  for kind in ExternalAudience AudienceActivation; do
    echo "  resource.customizations.health.aep.audience-operator.dev_$kind: |"
    sed 's/^\(.\)/    \1/' "$lua"
  done
} > "$out.tmp"
mv "$out.tmp" "$out"
echo "$out"
