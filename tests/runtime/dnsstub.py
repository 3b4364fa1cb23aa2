"""Test stand-in for the upstream resolver a run server's Docker is given with --dns.

Answers A queries for the names in argv[2:] (name=ip) and NXDOMAIN for everything else, on UDP port 53
of the address argv[1]. Started by tests/runtime/conftest.py inside the test network namespace.
"""

import socket
import struct
import sys


def answer(query: bytes, table: dict[str, str]) -> bytes:
    (qid,) = struct.unpack("!H", query[:2])
    pos, labels = 12, []
    while query[pos]:
        length = query[pos]
        labels.append(query[pos + 1 : pos + 1 + length].decode("ascii", "replace").lower())
        pos += 1 + length
    qtype = struct.unpack("!H", query[pos + 1 : pos + 3])[0]
    question = query[12 : pos + 5]
    ip = table.get(".".join(labels))
    if ip is None:
        return struct.pack("!HHHHHH", qid, 0x8183, 1, 0, 0, 0) + question
    if qtype != 1:
        return struct.pack("!HHHHHH", qid, 0x8180, 1, 0, 0, 0) + question
    record = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(ip)
    return struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question + record


def main() -> None:
    table = dict(arg.split("=", 1) for arg in sys.argv[2:])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((sys.argv[1], 53))
    print("ready", flush=True)
    while True:
        data, peer = sock.recvfrom(512)
        try:
            sock.sendto(answer(data, table), peer)
        except (IndexError, struct.error):
            continue


if __name__ == "__main__":
    main()
