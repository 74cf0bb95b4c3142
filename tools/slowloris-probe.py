#!/usr/bin/env python3
"""Real requests during a slowloris attack, counted.

Start an httpd image first (its port is printed as `listening: 127.0.0.1:PORT`):

    ulimit -n 4096; target/flexos/httpd-*/flexos-httpd --port 18090 &
    ulimit -n 4096; python3 tools/slowloris-probe.py 18090 500

The attack is the one of `httpd_keeps_serving_during_a_slowloris_attack`
(1,100 connections, one byte of a head each per second, reconnecting when
dropped). After 4 s, PROBES real requests are made 100 ms apart; the script
prints how many got no `200 OK`, and the median and slowest reply times.
With PROBES 0 it only attacks, for 60 s (the attacker of that test).
Only 127.0.0.1 is contacted.
"""
import socket
import statistics
import sys
import threading
import time

port, probes = int(sys.argv[1]), int(sys.argv[2])
stop = threading.Event()


def attack():
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 100000
    socks = {}

    def connect():
        try:
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            return s
        except OSError:
            return None

    step = 0
    while not stop.is_set():
        for i in range(1100):
            s = socks.get(i)
            if s is None:
                socks[i] = connect()
                continue
            try:
                s.send(head[step:step + 1])
            except OSError:
                s.close()
                socks[i] = connect()
        step += 1
        time.sleep(1)


def probe():
    start = time.time()
    try:
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(5)
        s.sendall(b"GET /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while True:
            try:
                data = s.recv(4096)
            except OSError:
                break
            if not data:
                break
            reply += data
        s.close()
    except OSError as e:
        reply = str(e).encode()
    return reply[:15], time.time() - start


threading.Thread(target=attack, daemon=True).start()
if probes == 0:
    time.sleep(60)
    sys.exit(0)
time.sleep(4)
results = []
for _ in range(probes):
    time.sleep(0.1)
    results.append(probe())
stop.set()
bad = [r for r in results if not r[0].startswith(b"HTTP/1.1 200")]
times = [t for _, t in results]
print(f"requests {len(results)}, not answered {len(bad)}, median {statistics.median(times):.3f} s, slowest {max(times):.3f} s")
for reply, t in bad[:10]:
    print(f"  {reply!r} after {t:.3f} s")
