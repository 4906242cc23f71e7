-- Argo CD health of lora.airepublic.io/Minion (docs/argocd.md).
-- Lua 5.1 only: Argo CD runs health checks in gopher-lua.
local hs = {}
local status = obj.status
if status == nil or status.observedGeneration == nil or status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to read this minion's spec"
  return hs
end
hs.status = "Healthy"
local message = "level " .. (status.level or 1) .. ", " .. (status.xp or 0) .. " XP"
if status.nextLevelXp ~= nil then
  message = message .. " (level " .. ((status.level or 1) + 1) .. " at " .. status.nextLevelXp .. ")"
end
message = message .. " from " .. (status.runs or 0) .. " runs"
if status.adapter ~= nil and status.adapter.uri ~= nil then
  message = message .. "; serves " .. status.adapter.uri
else
  message = message .. "; no adapter to serve yet"
end
hs.message = message
return hs
