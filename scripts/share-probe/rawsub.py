"""Minimal MQTT 3.1.1 QoS 1 subscriber for scripts/share-probe/reconnect.sh: connect with
clean_session=0, SUBSCRIBE only if asked (to resume a session without subscribing again), PUBACK
every publish and print its payload. Args: port client_id filter subscribe(0/1) seconds"""
import socket, struct, sys, time
port, cid, flt, do_sub, secs = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "1", float(sys.argv[5])
def s16(b): return struct.pack("!H", len(b)) + b
def rl(n):
    out = b""
    while True:
        d = n % 128; n //= 128
        out += bytes([d | (0x80 if n else 0)])
        if not n: return out
s = socket.create_connection(("127.0.0.1", port))
var = s16(b"MQTT") + bytes([4, 0x00]) + struct.pack("!H", 60)  # clean session 0
body = var + s16(cid.encode())
s.sendall(bytes([0x10]) + rl(len(body)) + body)
buf = b""
def read_packet():
    global buf
    while True:
        if len(buf) >= 2:
            mult, n, i = 1, 0, 1
            while True:
                if i >= len(buf): break
                d = buf[i]; n += (d & 127) * mult; mult *= 128; i += 1
                if not d & 128:
                    if len(buf) >= i + n:
                        p = (buf[0], buf[i:i+n]); buf = buf[i+n:]; return p
                    break
        d = s.recv(65536)
        if not d: return None
        buf += d
h, b = read_packet()
print(f"# connack session_present={b[0]&1} rc={b[1]}", file=sys.stderr)
if do_sub:
    body = struct.pack("!H", 1) + s16(flt.encode()) + bytes([1])
    s.sendall(bytes([0x82]) + rl(len(body)) + body)
s.settimeout(0.2)
end = time.time() + secs
while time.time() < end:
    try:
        p = read_packet()
    except socket.timeout:
        continue
    if p is None: break
    h, b = p
    if h >> 4 == 3:
        tl = struct.unpack("!H", b[:2])[0]; i = 2 + tl
        pid = None
        if (h >> 1) & 3:
            pid = struct.unpack("!H", b[i:i+2])[0]; i += 2
            s.sendall(bytes([0x40, 2]) + struct.pack("!H", pid))
        print(b[i:].decode(), flush=True)
    elif h >> 4 == 9:
        print(f"# suback {list(b[2:])}", file=sys.stderr)
s.close()
