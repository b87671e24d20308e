-- Evaluates an Argo CD health script the way Argo CD does, with a stock Lua interpreter.
--
--   lua5.4 hack/argocd-health/run.lua HEALTH.lua OBJECT.json...
--
-- For each OBJECT.json (one Kubernetes object as JSON, e.g. `kubectl get -o json`), it sets the
-- global `obj` to the decoded object, runs HEALTH.lua and prints `status<TAB>message` on one
-- line, in argument order (tabs and newlines inside the message become spaces).
--
-- The script runs in a sandbox holding only what Argo CD opens when
-- `resource.customizations.useOpenLibs.<group>_<kind>` is not set: the base functions, `table`,
-- `require`/`package` and a "safe" `os` (time, date, clock, difftime). `string`, `math`, `io`,
-- `debug` and string methods (`s:find(...)`) are absent there, so using them here fails as it
-- would in Argo CD. As in Argo CD, a script error or an unknown status gives `Unknown`.
-- Argo CD's interpreter is gopher-lua (Lua 5.1): keep health scripts free of Lua 5.2+ syntax
-- (goto, //, bitwise operators), which this Lua 5.4 would accept.
-- Exits non-zero only on unusable arguments or unreadable JSON.

local VALID = {
  Healthy = true, Progressing = true, Degraded = true, Suspended = true, Missing = true, Unknown = true,
}

-- Minimal, strict JSON decoder (RFC 8259). Objects and arrays become tables; `null` becomes nil,
-- as in Argo CD's conversion of the unstructured object.
local function decode_json(text)
  local pos = 1
  local byte, sub, find, char = string.byte, string.sub, string.find, string.char

  local function fail(what)
    error(string.format("invalid JSON at byte %d: %s", pos, what), 0)
  end
  local function skip_ws()
    pos = (find(text, "[^ \t\r\n]", pos)) or (#text + 1)
  end
  local function utf8_char(cp)
    if cp < 0x80 then return char(cp) end
    if cp < 0x800 then return char(0xC0 | (cp >> 6), 0x80 | (cp & 0x3F)) end
    if cp < 0x10000 then
      return char(0xE0 | (cp >> 12), 0x80 | ((cp >> 6) & 0x3F), 0x80 | (cp & 0x3F))
    end
    return char(0xF0 | (cp >> 18), 0x80 | ((cp >> 12) & 0x3F), 0x80 | ((cp >> 6) & 0x3F), 0x80 | (cp & 0x3F))
  end

  local value -- forward declaration

  local function hex4()
    local h = sub(text, pos, pos + 3)
    if not h:match("^%x%x%x%x$") then fail("bad \\u escape") end
    pos = pos + 4
    return tonumber(h, 16)
  end

  local escapes = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }

  local function str()
    pos = pos + 1 -- opening quote
    local parts = {}
    while true do
      local s, e = find(text, '["\\%c]', pos)
      if not s then fail("unterminated string") end
      parts[#parts + 1] = sub(text, pos, s - 1)
      local c = sub(text, s, e)
      if c == '"' then
        pos = s + 1
        return table.concat(parts)
      elseif c == "\\" then
        local k = sub(text, s + 1, s + 1)
        pos = s + 2
        if k == "u" then
          local cp = hex4()
          if cp >= 0xD800 and cp <= 0xDBFF then
            if sub(text, pos, pos + 1) ~= "\\u" then fail("lone high surrogate") end
            pos = pos + 2
            local lo = hex4()
            if lo < 0xDC00 or lo > 0xDFFF then fail("bad low surrogate") end
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
          elseif cp >= 0xDC00 and cp <= 0xDFFF then
            fail("lone low surrogate")
          end
          parts[#parts + 1] = utf8_char(cp)
        elseif escapes[k] then
          parts[#parts + 1] = escapes[k]
        else
          fail("bad escape")
        end
      else
        fail("control character in string")
      end
    end
  end

  local function num()
    local s, e = find(text, "^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
    if not s then fail("bad number") end
    local literal = sub(text, s, e)
    if not literal:match("^-?0$") and not literal:match("^-?[1-9]%d*$")
        and not literal:match("^-?%d+%.%d+$") and not literal:match("^-?%d+%.?%d*[eE][-+]?%d+$") then
      fail("bad number " .. literal)
    end
    pos = e + 1
    -- Integers stay integers (metadata.generation), like Argo CD's int64 -> Lua number.
    return math.tointeger(tonumber(literal)) or tonumber(literal)
  end

  local function arr()
    pos = pos + 1
    local out, n = {}, 0
    skip_ws()
    if sub(text, pos, pos) == "]" then pos = pos + 1; return out end
    while true do
      n = n + 1
      out[n] = value()
      skip_ws()
      local c = sub(text, pos, pos)
      pos = pos + 1
      if c == "]" then return out end
      if c ~= "," then fail("expected , or ]") end
    end
  end

  local function object()
    pos = pos + 1
    local out = {}
    skip_ws()
    if sub(text, pos, pos) == "}" then pos = pos + 1; return out end
    while true do
      skip_ws()
      if sub(text, pos, pos) ~= '"' then fail("expected a key") end
      local k = str()
      skip_ws()
      if sub(text, pos, pos) ~= ":" then fail("expected :") end
      pos = pos + 1
      out[k] = value()
      skip_ws()
      local c = sub(text, pos, pos)
      pos = pos + 1
      if c == "}" then return out end
      if c ~= "," then fail("expected , or }") end
    end
  end

  local literals = { ["true"] = true, ["false"] = false }

  value = function()
    skip_ws()
    local c = byte(text, pos)
    if c == 0x7B then return object() end -- {
    if c == 0x5B then return arr() end -- [
    if c == 0x22 then return str() end -- "
    if c == 0x2D or (c and c >= 0x30 and c <= 0x39) then return num() end
    for word, v in pairs(literals) do
      if sub(text, pos, pos + #word - 1) == word then pos = pos + #word; return v end
    end
    if sub(text, pos, pos + 3) == "null" then pos = pos + 4; return nil end
    fail("unexpected character")
  end

  local result = value()
  skip_ws()
  if pos <= #text then fail("trailing data") end
  return result
end

-- The globals Argo CD's Lua VM offers a health script (gopher-lua with SkipOpenLibs, then
-- package, base, table and its safe os opened).
local function argo_env()
  local env = {}
  for _, name in ipairs({
    "assert", "error", "getmetatable", "ipairs", "load", "next", "pairs", "pcall", "print",
    "rawequal", "rawget", "rawlen", "rawset", "select", "setmetatable", "tonumber", "tostring",
    "type", "xpcall", "_VERSION",
  }) do
    env[name] = _G[name]
  end
  env.unpack = table.unpack -- Lua 5.1 base function in gopher-lua
  env.table = {
    concat = table.concat, insert = table.insert, remove = table.remove, sort = table.sort,
    unpack = table.unpack,
  }
  local safe_os = { clock = os.clock, date = os.date, difftime = os.difftime, time = os.time }
  env.os = safe_os
  env.package = { loaded = { os = safe_os, table = env.table } }
  env.require = function(name)
    local m = env.package.loaded[name]
    if m == nil then error("module '" .. tostring(name) .. "' not found", 2) end
    return m
  end
  env._G = env
  return env
end

local function one_line(s)
  return (tostring(s):gsub("[\t\r\n]", " "))
end

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then
    io.stderr:write("run.lua: ", err, "\n")
    os.exit(2)
  end
  local text = f:read("a")
  f:close()
  return text
end

local script_path = arg[1]
if script_path == nil or arg[2] == nil then
  io.stderr:write("usage: lua5.4 run.lua HEALTH.lua OBJECT.json...\n")
  os.exit(2)
end
local script = read_file(script_path)

local string_mt = getmetatable("")
for i = 2, #arg do
  local ok, object = pcall(decode_json, read_file(arg[i]))
  if not ok or type(object) ~= "table" then
    io.stderr:write("run.lua: ", arg[i], ": ", ok and "not a JSON object" or object, "\n")
    os.exit(2)
  end
  local env = argo_env()
  env.obj = object
  local status, message
  local chunk, load_err = load(script, "=" .. script_path, "t", env)
  if not chunk then
    status, message = "Unknown", load_err
  else
    -- No string methods in Argo CD's VM: detach the string metatable while the script runs.
    string_mt.__index = nil
    local ran, hs = pcall(chunk)
    string_mt.__index = string
    if not ran then
      status, message = "Unknown", hs
    elseif type(hs) ~= "table" then
      status, message = "Unknown", "expect table output from Lua script, not " .. type(hs)
    elseif not VALID[hs.status] then
      status, message = "Unknown", "Lua returned an invalid health status"
    else
      status, message = hs.status, hs.message or ""
    end
  end
  io.write(status, "\t", one_line(message), "\n")
end
