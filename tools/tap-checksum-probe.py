"""Sends TCP connection requests (SYN) straight onto a tap device, past the
kernel's TCP, once with a wrong TCP checksum and once with the right one,
and reports whether the image at the other end answered each (SYN-ACK).

Usage (inside the image's network namespace, as root):
    python3 tap-checksum-probe.py TAP HOST_IP IMAGE_IP PORT

Prints `wrong checksum: answered|ignored` and `right checksum: answered|ignored`.
The image must ignore the first and answer the second. Frames sent this way
carry no checksum note from the kernel, so the image checks them itself
(crates/platform-linux/src/net/tap.rs).
"""

import random
import socket
import struct
import sys
import time


def checksum(data):
    """The Internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def syn_frame(src_mac, dst_mac, src_ip, dst_ip, src_port, dst_port, wrong):
    """An Ethernet frame holding a TCP SYN; with `wrong`, its TCP checksum is off by one."""
    tcp = struct.pack("!HHIIBBHHH", src_port, dst_port, random.getrandbits(32), 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = src_ip + dst_ip + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp_sum = checksum(pseudo + tcp) ^ (1 if wrong else 0)
    tcp = tcp[:16] + struct.pack("!H", tcp_sum) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, socket.IPPROTO_TCP, 0, src_ip, dst_ip)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return dst_mac + src_mac + b"\x08\x00" + ip + tcp


def answered(sock, src_port, deadline):
    """Whether a SYN-ACK to `src_port` arrives before `deadline`."""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            frame = sock.recv(65536)
        except socket.timeout:
            return False
        if len(frame) < 54 or frame[12:14] != b"\x08\x00" or frame[23] != socket.IPPROTO_TCP:
            continue
        header = (frame[14] & 0x0F) * 4
        tcp = frame[14 + header :]
        if struct.unpack("!H", tcp[2:4])[0] == src_port and tcp[13] & 0x12 == 0x12:
            return True
    return False


def main():
    tap, host_ip, image_ip, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    sock.bind((tap, 0))
    src_mac = sock.getsockname()[4]
    dst_ip = socket.inet_aton(image_ip)
    dst_mac = b"\x02\xf1" + dst_ip  # the image's MAC (flexos_platform::net)
    src_ip = socket.inet_aton(host_ip)
    for label, wrong in (("wrong checksum", True), ("right checksum", False)):
        src_port = random.randint(20000, 60000)
        sock.send(syn_frame(src_mac, dst_mac, src_ip, dst_ip, src_port, port, wrong))
        ok = answered(sock, src_port, time.monotonic() + 1.5)
        print(f"{label}: {'answered' if ok else 'ignored'}", flush=True)


if __name__ == "__main__":
    main()
