"""The Lua scripts of the Redis job store: each change of a record, its index entries and
the step's own result in one round trip."""

# Shared by the scripts below: a write with an optional TTL ('' for none), the move of a
# job's entry into the index of its kind ('' for not indexed), and the commands of a message
# (see redis_publish.py): name, key and value of each, every field as "<byte length>:<bytes>"
# (no JSON to decode; '' for none).
LUA_HELPERS = """
local function put(key, value, ttl)
  if ttl == '' then
    redis.call('SET', key, value)
  else
    redis.call('SET', key, value, 'EX', ttl)
  end
end
local function index(scheduled, active, id, kind, at)
  if kind == 'scheduled' then
    redis.call('ZREM', active, id)
    redis.call('ZADD', scheduled, at, id)
  elseif kind == 'active' then
    redis.call('ZREM', scheduled, id)
    redis.call('ZADD', active, at, id)
  else
    redis.call('ZREM', scheduled, id)
    redis.call('ZREM', active, id)
  end
end
local function push(commands)
  local at, fields = 1, {}
  while at <= #commands do
    local colon = string.find(commands, ':', at, true)
    local last = colon + tonumber(string.sub(commands, at, colon - 1))
    fields[#fields + 1] = string.sub(commands, colon + 1, last)
    at = last + 1
    if #fields == 3 then
      redis.call(fields[1], fields[2], fields[3])
      fields = {}
    end
  end
end
"""

# Compare-and-set in one round trip: the record is written (and its index entry moved) only if
# the SHA-1 of its stored bytes is the one the change was computed from. On a mismatch the
# stored bytes come back, so the caller computes again without another read. A final record
# is also published on its key, for waiters. KEYS[4], when given, is the step task's result
# key: written in the same script, as Celery would write it. The job moves between the
# listing's status sets only when its status changes: the stored record (JSON, as this store
# writes it) names the old one; a record it cannot read that way leaves every other set.
# ARGV[10], when not '', is the next step's message: the Redis commands kombu would run to
# publish it (see redis_publish.py), run only with the write.
COMPARE_AND_SET = (
    LUA_HELPERS
    + """
local current = redis.call('GET', KEYS[1])
if not current then return false end
if redis.sha1hex(current) ~= ARGV[1] then return current end
put(KEYS[1], ARGV[2], ARGV[3])
index(KEYS[2], KEYS[3], ARGV[4], ARGV[5], ARGV[6])
if ARGV[7] == '1' then redis.call('PUBLISH', KEYS[1], ARGV[2]) end
if KEYS[4] then
  put(KEYS[4], ARGV[8], ARGV[9])
  redis.call('PUBLISH', KEYS[4], ARGV[8])
end
push(ARGV[10])
if ARGV[11] ~= '' then
  local old = string.match(current, '^{"status": "(%u+)"')
  if old == nil then
    for i = 15, #ARGV do redis.call('ZREM', ARGV[i], ARGV[4]) end
    redis.call('ZADD', ARGV[12], ARGV[11], ARGV[4])
  elseif old ~= ARGV[14] then
    redis.call('ZREM', ARGV[13] .. old, ARGV[4])
    redis.call('ZADD', ARGV[12], ARGV[11], ARGV[4])
  end
end
return 1
"""
)

# Create in one round trip: nothing is written when the id is taken.
CREATE = (
    LUA_HELPERS
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
put(KEYS[1], ARGV[1], ARGV[2])
index(KEYS[2], KEYS[3], ARGV[3], ARGV[4], ARGV[5])
if ARGV[6] ~= '' then
  for i = 7, #ARGV do redis.call('ZADD', ARGV[i], ARGV[6], ARGV[3]) end
end
return 1
"""
)

# Drop an index entry only if its score is still the one read: a job that a concurrent write
# has just moved (same member, new score) keeps its entry. Scores are compared as the doubles
# Redis stores; both sides are written by `_score`.
DROP_INDEX_ENTRY = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""

# A concurrency slots document changed only if it is still the one read ('' for none, and
# to remove it): the rules of what to write are computed in Python, the compare here.
SWAP_SLOTS = """
local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2]) end
return 1
"""

#: Replies of CREATE_UNLESS_PAUSED besides 0 (the id is taken) and 1 (stored as given).
STORED_PARKED = 2
PAUSED = 3

# Create, parked when the workflow is paused (KEYS[4], the paused set, holds ARGV[1]): the
# paused variant of the record is ARGV[2]; the rest are CREATE's arguments. Replies 0 when
# the id is taken, 1 when stored as given, 2 when stored parked, and 3, writing nothing, when
# the workflow is paused and ARGV[2] is '' (the caller encodes the parked variant only then).
# ARGV[8] is the first step's message (as COMPARE_AND_SET's ARGV[10]), pushed only when
# stored as given.
CREATE_UNLESS_PAUSED = (
    LUA_HELPERS
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local stored = 1
local record = ARGV[3]
if redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 1 then
  if ARGV[2] == '' then return 3 end
  stored = 2
  record = ARGV[2]
end
put(KEYS[1], record, ARGV[4])
index(KEYS[2], KEYS[3], ARGV[5], ARGV[6], ARGV[7])
if stored == 1 then push(ARGV[8]) end
if ARGV[9] ~= '' then
  for i = 10, #ARGV do redis.call('ZADD', ARGV[i], ARGV[9], ARGV[5]) end
end
return stored
"""
)

# A step's claim in one round trip, without a read first: on the common case (the record,
# as this store writes it, QUEUED at the run the message names, no deadline to check), the
# claim's fields are edited in the stored JSON text and the claimed record is written and
# returned, as {1, record, the old values of the fields it changed}. The job model puts every
# field a claim changes or checks first, before any field that can hold user data, and each
# value is matched as null, digits, or a string without quotes or escapes: the pattern then
# matches only the record's own keys, never one inside a value. Anything else (another
# status, an old record's field order, an escaped string, another run) changes nothing and
# returns {0, record} (no record: false): the caller runs the claim's transition on it.
# KEYS: the record, the scheduled and the active index, the listing's set of every job, the
# QUEUED and the RUNNING status sets. ARGV: the id, workflow name and step name as JSON, the
# steps completed and the step's index, the workflow version and the token as JSON, the time
# of the claim and the lease's end as JSON, the index score, and the id as the sets' member.
CLAIM = r"""
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
local s = '("?[^"\\]*"?)'
local n = '(%d+)'
local pattern = '^{"status": "QUEUED", "result": {"id":' .. s .. ',"workflow_name":' .. s
  .. ',"status":2,"current_step":' .. n .. ',"steps_completed":' .. n
  .. ',"current_step_name":' .. s .. ',"workflow_version":' .. s .. ',"claim":' .. s
  .. ',"lease_until":' .. s .. ',"attempt":' .. n .. ',"started_at":' .. s
  .. ',"step_started_at":' .. s .. ',"queued_by":' .. s .. ',"deadline":' .. s
  .. '(),"percent_completed":'
local id, workflow, step, done, name, version, claim, lease, attempt, started, step_started,
  queued_by, deadline, rest = string.match(raw, pattern)
if id ~= ARGV[1] or workflow ~= ARGV[2] or name ~= ARGV[3] or done ~= ARGV[4]
  or (deadline ~= 'null' and done == '0') or #attempt > 9 then
  return {0, raw}
end
local now = ARGV[8]
local record = '{"status": "RUNNING", "result": {"id":' .. id .. ',"workflow_name":' .. workflow
  .. ',"status":3,"current_step":' .. ARGV[5] .. ',"steps_completed":' .. done
  .. ',"current_step_name":' .. name .. ',"workflow_version":' .. ARGV[6]
  .. ',"claim":' .. ARGV[7] .. ',"lease_until":' .. ARGV[9]
  .. ',"attempt":' .. string.format('%d', tonumber(attempt) + 1)
  .. ',"started_at":' .. (started == 'null' and now or started)
  .. ',"step_started_at":' .. now .. ',"queued_by":null,"deadline":' .. deadline
  .. string.sub(raw, rest)
redis.call('SET', KEYS[1], record)
redis.call('ZREM', KEYS[2], ARGV[11])
redis.call('ZADD', KEYS[3], ARGV[10], ARGV[11])
local submitted = redis.call('ZSCORE', KEYS[4], ARGV[11])
if submitted then
  redis.call('ZREM', KEYS[5], ARGV[11])
  redis.call('ZADD', KEYS[6], submitted, ARGV[11])
end
return {1, record, step, version, claim, lease, attempt, started, step_started, queued_by}
"""
