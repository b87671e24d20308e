-- Argo CD health check for aep.audience-operator.dev/ExternalAudience and AudienceActivation.
-- Install under resource.customizations.health.aep.audience-operator.dev_<Kind> in argocd-cm
-- (deploy/argocd/argocd-cm-patch.yaml). Uses base functions only: Argo CD runs health scripts
-- without the string, math and io libraries (hack/argocd-health/run.lua checks it the same way).
local hs = { status = "Progressing", message = "Waiting for the operator" }
if obj.status == nil then return hs end
local byType = {}
for _, c in ipairs(obj.status.conditions or {}) do byType[c.type] = c end
local function isTrue(t) return byType[t] ~= nil and byType[t].status == "True" end
local function msg(t) return (byType[t] and byType[t].message) or "" end
if isTrue("Paused") then return { status = "Suspended", message = msg("Paused") } end
local gen, seen = obj.metadata.generation, obj.status.observedGeneration
if seen == nil or gen == nil or seen ~= gen then
  return { status = "Progressing", message = "Generation not yet observed" }
end
if isTrue("Stalled") then return { status = "Degraded", message = msg("Stalled") } end
if isTrue("Ready") then return { status = "Healthy", message = msg("Ready") } end
if byType["Ready"] ~= nil then hs.message = msg("Ready") end
return hs
