-- Argo CD health of lora.airepublic.io/LoraTrainingJob (docs/argocd.md explains each mapping).
-- Lua 5.1 only: Argo CD runs health checks in gopher-lua.
local hs = {}

-- The condition of this type if its status is "True", else nil.
local function trueCondition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind and c.status == "True" then
      return c
    end
  end
  return nil
end

-- The value, or the fallback when it is absent or empty.
local function text(value, fallback)
  if value == nil or value == "" then
    return fallback
  end
  return value
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to create the training Job"
  return hs
end

local phase = status.phase
-- What the trainer reported lives in status.trainer; absent until its first report.
local trainer = status.trainer or {}
local where = text(trainer.stepSummary, "step ?")
if trainer.progress ~= nil then
  where = where .. " (" .. trainer.progress .. "%)"
end

if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = text(status.message, "Training failed")
  return hs
end

-- Git no longer describes what runs (or ran): only a new resource trains with the edited spec.
local ignored = trueCondition(status, "SpecChangeIgnored")
if ignored ~= nil then
  hs.status = "Degraded"
  hs.message = text(ignored.message, "The spec changed after the Job was created and is not applied")
  return hs
end

if phase == "Succeeded" then
  hs.status = "Healthy"
  local regressed = trueCondition(status, "QualityRegressed")
  if regressed ~= nil then
    hs.message = "Succeeded, but the adapter is worse than the base model: "
      .. text(regressed.message, "see the QualityRegressed condition")
  elseif status.xp ~= nil then
    hs.message = "Succeeded with " .. status.xp .. " XP"
  else
    hs.message = "Succeeded"
  end
  return hs
end

if phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = text(status.message, "Suspended")
  return hs
end

if phase == "Running" then
  local stalled = trueCondition(status, "Stalled")
  if stalled ~= nil then
    hs.status = "Degraded"
    hs.message = "Stalled at " .. where .. ": " .. text(stalled.message, "no progress")
    return hs
  end
  hs.status = "Progressing"
  hs.message = "Training: " .. where
  return hs
end

if phase == "Pending" then
  hs.status = "Progressing"
  hs.message = "Pending: " .. text(status.message, "waiting for the trainer pod")
  return hs
end

hs.status = "Unknown"
hs.message = "Unknown phase " .. phase
return hs
