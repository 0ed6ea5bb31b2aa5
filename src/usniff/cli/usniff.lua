-- usniff's Wireshark plugin, written by `usniff wireshark --install`.
--
-- (a) Dissects the protocols usniff writes on ports where stock Wireshark has no
--     dissector (the table below is filled in from usniff's protocol registry).
-- (b) Shows the process metadata usniff writes in each packet's comment
--     (pid=.. tid=.. uid=.. comm="..." inode=.. peer=.. peer_pid=.. peer_comm="..."
--     type=.. cgroup=.. container="..." peer_container="..." path="...") as fields:
--     filter with `usniff.comm == "php-fpm8.2"` or `usniff.container == "web-1"`,
--     or right-click a field and "Apply as Column".

local DECODE_AS = {} -- usniff: ports

local usniff = Proto("usniff", "usniff Unix socket metadata")
local f = {
    pid = ProtoField.uint32("usniff.pid", "Sender PID"),
    tid = ProtoField.uint32("usniff.tid", "Sender thread"),
    uid = ProtoField.uint32("usniff.uid", "Sender UID"),
    comm = ProtoField.string("usniff.comm", "Sender process"),
    inode = ProtoField.uint32("usniff.inode", "Sender socket inode"),
    peer = ProtoField.uint32("usniff.peer_inode", "Peer socket inode"),
    peer_pid = ProtoField.uint32("usniff.peer_pid", "Peer PID"),
    peer_comm = ProtoField.string("usniff.peer_comm", "Peer process"),
    type = ProtoField.string("usniff.type", "Socket type"),
    path = ProtoField.string("usniff.path", "Socket path"),
    -- cgroup ids are 64-bit: strings here (Lua numbers are doubles)
    cgroup = ProtoField.string("usniff.cgroup", "Sender cgroup id"),
    cgroup_path = ProtoField.string("usniff.cgroup_path", "Sender cgroup"),
    container = ProtoField.string("usniff.container", "Sender container"),
    pod = ProtoField.string("usniff.pod", "Sender pod"),
    peer_cgroup = ProtoField.string("usniff.peer_cgroup", "Peer cgroup id"),
    peer_cgroup_path = ProtoField.string("usniff.peer_cgroup_path", "Peer cgroup"),
    peer_container = ProtoField.string("usniff.peer_container", "Peer container"),
    peer_pod = ProtoField.string("usniff.peer_pod", "Peer pod"),
}
usniff.fields = { f.pid, f.tid, f.uid, f.comm, f.inode, f.peer, f.peer_pid, f.peer_comm,
                  f.type, f.path, f.cgroup, f.cgroup_path, f.container, f.pod, f.peer_cgroup,
                  f.peer_cgroup_path, f.peer_container, f.peer_pod }
local NUMBERS = { "pid", "tid", "uid", "inode", "peer", "peer_pid" }
local STRINGS = { "comm", "peer_comm", "type", "path", "cgroup", "cgroup_path", "container", "pod",
                  "peer_cgroup", "peer_cgroup_path", "peer_container", "peer_pod" }

local comment_field = Field.new("frame.comment")

-- UTF-8 bytes of a code point (Wireshark's Lua 5.2 has no utf8 library)
local function utf8_char(cp)
    if cp < 0x80 then return string.char(cp) end
    if cp < 0x800 then
        return string.char(0xC0 + math.floor(cp / 0x40), 0x80 + cp % 0x40)
    end
    if cp < 0x10000 then
        return string.char(0xE0 + math.floor(cp / 0x1000), 0x80 + math.floor(cp / 0x40) % 0x40,
                           0x80 + cp % 0x40)
    end
    return string.char(0xF0 + math.floor(cp / 0x40000), 0x80 + math.floor(cp / 0x1000) % 0x40,
                       0x80 + math.floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
end

local ESCAPES = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n",
                  r = "\r", t = "\t" }

-- A JSON string starting at text[i] (the opening quote): its value, and the index after it.
local function json_string(text, i)
    local out, j, n = {}, i + 1, #text
    while j <= n do
        local c = text:sub(j, j)
        if c == '"' then return table.concat(out), j + 1 end
        if c == "\\" then
            local e = text:sub(j + 1, j + 1)
            if e == "u" then
                local cp = tonumber(text:sub(j + 2, j + 5), 16) or 0xFFFD
                j = j + 6
                if cp >= 0xD800 and cp < 0xDC00 and text:sub(j, j + 1) == "\\u" then
                    local low = tonumber(text:sub(j + 2, j + 5), 16) or 0
                    cp = 0x10000 + (cp - 0xD800) * 0x400 + (low - 0xDC00)
                    j = j + 6
                end
                out[#out + 1] = utf8_char(cp)
            else
                out[#out + 1] = ESCAPES[e] or e
                j = j + 2
            end
        else
            out[#out + 1] = c
            j = j + 1
        end
    end
    return table.concat(out), j
end

-- key=value pairs of a usniff comment (values: bare words or JSON strings)
local function parse(text)
    local meta, i, n = {}, 1, #text
    while i <= n do
        local _, key_end, key = text:find("^([%w_]+)=", i)
        if not key then
            local space = text:find(" ", i, true)
            if not space then break end
            i = space + 1
        elseif text:sub(key_end + 1, key_end + 1) == '"' then
            meta[key], i = json_string(text, key_end + 1)
            i = i + 1
        else
            local space = text:find(" ", key_end + 1, true) or n + 1
            meta[key] = text:sub(key_end + 1, space - 1)
            i = space + 1
        end
    end
    return meta
end

function usniff.dissector(tvb, pinfo, tree)
    for _, comment in ipairs({ comment_field() }) do
        local meta = parse(tostring(comment.value))
        if meta.pid and meta.inode then
            local who = (meta.comm or "?") .. "[" .. meta.pid .. "]"
            if meta.container then who = who .. "@" .. meta.container end
            local to = meta.peer_comm and (" -> " .. meta.peer_comm .. "[" .. (meta.peer_pid or "?") .. "]") or ""
            if meta.peer_comm and meta.peer_container then to = to .. "@" .. meta.peer_container end
            local t = tree:add(usniff, tvb(0, 0), "usniff: " .. who .. to .. " " .. (meta.path or ""))
            for _, k in ipairs(NUMBERS) do
                if meta[k] then t:add(f[k], tonumber(meta[k])) end
            end
            for _, k in ipairs(STRINGS) do
                if meta[k] then t:add(f[k], meta[k]) end
            end
            return
        end
    end
end

register_postdissector(usniff)

-- D-Bus on the port usniff gives it: the SASL lines shown as text, each binary message
-- (its length from the header) handed to Wireshark's own D-Bus dissector.
local DBUS_PORT = 0 -- usniff: dbus port
local sasl = Proto("usniff_dbus_sasl", "D-Bus authentication (SASL)")
local sasl_line = ProtoField.string("usniff_dbus_sasl.line", "Line")
sasl.fields = { sasl_line }

local function message_length(tvb, offset)
    -- fixed header: endianness, type, flags, version, body length, serial, fields length
    local order = tvb(offset, 1):uint()
    local le = order == 0x6c -- "l"
    local function u32(at)
        return le and tvb(offset + at, 4):le_uint() or tvb(offset + at, 4):uint()
    end
    local fields = u32(12)
    local header = 16 + fields
    header = header + (8 - header % 8) % 8
    return header + u32(4)
end

local function is_message(tvb, offset)
    local order = tvb(offset, 1):uint()
    local kind = tvb(offset + 1, 1):uint()
    return (order == 0x6c or order == 0x42) and kind >= 1 and kind <= 4
        and tvb(offset + 3, 1):uint() == 1
end

local dbus_tcp = Proto("usniff_dbus", "D-Bus over a Unix socket (usniff)")

-- Wireshark registers its D-Bus dissector for the D-Bus link type only, not by name
local dbus_ok, dbus = pcall(function()
    return DissectorTable.get("wtap_encap"):get_dissector(wtap_encaps.DBUS)
end)

function dbus_tcp.dissector(tvb, pinfo, tree)
    local offset, n = 0, tvb:len()
    while offset < n do
        local first = tvb(offset, 1):uint()
        if first == 0 then -- the client's credentials byte, before AUTH
            tree:add(sasl, tvb(offset, 1), "D-Bus credentials byte")
            offset = offset + 1
        elseif n - offset >= 16 and is_message(tvb, offset) then
            local len = message_length(tvb, offset)
            if offset + len > n then
                pinfo.desegment_offset = offset
                pinfo.desegment_len = offset + len - n
                return n
            end
            if dbus_ok and dbus then
                dbus:call(tvb(offset, len):tvb(), pinfo, tree)
            end
            offset = offset + len
        else
            local text = tvb(offset, n - offset):string()
            local eol = text:find("\r\n", 1, true)
            if not eol then
                pinfo.desegment_offset = offset
                pinfo.desegment_len = DESEGMENT_ONE_MORE_SEGMENT
                return n
            end
            local t = tree:add(sasl, tvb(offset, eol + 1))
            t:add(sasl_line, tvb(offset, eol - 1))
            t:append_text(": " .. text:sub(1, eol - 1))
            pinfo.cols.protocol = "D-Bus SASL"
            pinfo.cols.info = text:sub(1, eol - 1)
            offset = offset + eol + 1
        end
    end
    return n
end

local tcp_port = DissectorTable.get("tcp.port")
if DBUS_PORT > 0 then tcp_port:add(DBUS_PORT, dbus_tcp) end
for _, entry in ipairs(DECODE_AS) do
    local ok, handle = pcall(Dissector.get, entry[2])
    if ok and handle then tcp_port:add(entry[1], handle) end
end
