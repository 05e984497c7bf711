#!/usr/bin/env python3
"""Prints the BGP messages a peer on port 179 sent, one hex line each, from a
pcap, reassembling each TCP stream in sequence order (via tshark)."""
import subprocess, sys

pcap, peer = sys.argv[1], sys.argv[2]
out = subprocess.run(
    ["tshark", "-r", pcap, "-Y", "tcp.srcport == 179 && tcp.len > 0", "-T", "fields",
     "-e", "tcp.stream", "-e", "tcp.seq_raw", "-e", "tcp.payload", "-e", "ip.src", "-e", "ipv6.src"],
    check=True, capture_output=True, text=True).stdout
streams = {}
for line in out.splitlines():
    stream, seq, payload, src4, src6 = (line.split("\t") + [""] * 5)[:5]
    streams.setdefault(stream, {"src": src4 or src6, "segs": {}})["segs"][int(seq)] = bytes.fromhex(payload.replace(":", ""))
names = {1: "OPEN", 2: "UPDATE", 3: "NOTIFICATION", 4: "KEEPALIVE", 5: "ROUTE-REFRESH"}
print(f"# BGP messages sent by {peer} to tapir in the reference lab, captured by scripts/capture-vectors.")
print("# One message per line: `SESSION TYPE HEX`.")
for s in sorted(streams, key=int):
    data = b"".join(v for _, v in sorted(streams[s]["segs"].items()))
    session = "ipv6" if ":" in streams[s]["src"] else "ipv4"
    while len(data) >= 19:
        n = int.from_bytes(data[16:18], "big")
        msg, data = data[:n], data[n:]
        print(f"{session} {names.get(msg[18], msg[18])} {msg.hex()}")
