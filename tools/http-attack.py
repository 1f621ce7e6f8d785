#!/usr/bin/env python3
"""Holds a slow-client attack on concur's HTTP port and times scrapes.

Usage: tools/http-attack.py HOST:PORT [--drips 3] [--idle 500] [--secs 5]
                                       [--scrape-every 0.5]

For --secs seconds: --drips connections each send a request head one
byte every 1.5 s (a new one replaces a drip the server closes), --idle
connections are opened at the start and left silent, and every
--scrape-every seconds `GET /metrics` is timed on a fresh connection,
from the connect to the last byte. Then it prints one line:

    scrapes 10 all 200, median 0.6 ms, max 1.9 ms; idle closed by the server 440 of 500; drips 3 (0 replaced)

A scrape that takes 10 s (Prometheus's default scrape timeout) or fails
is counted as failed: "scrapes 2 2 FAILED, ...".

`--drips 0 --idle 0` times the scrapes alone, the baseline.
Talks to the address given only; meant for loopback.
"""

import argparse
import resource
import select
import socket
import statistics
import threading
import time

HEAD = b"GET /metrics HTTP/1.1\r\nHost: concur\r\nUser-Agent: drip\r\n\r\n"
DRIP_EVERY = 1.5


def scrape(addr):
    """Seconds from connect to the last byte (at most 10 s, Prometheus's
    scrape timeout), and whether a whole 200 came in that time."""
    start = time.monotonic()
    answer = b""
    try:
        with socket.create_connection(addr, timeout=10) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: concur\r\nConnection: close\r\n\r\n")
            while (chunk := s.recv(65536)) and time.monotonic() - start < 10:
                answer += chunk
    except OSError:
        return time.monotonic() - start, False
    took = time.monotonic() - start
    return took, took < 10 and answer.startswith(b"HTTP/1.1 200 ")


def closed(s):
    """True if the server has closed s (it reads an end or an error)."""
    readable, _, _ = select.select([s], [], [], 0)
    if not readable:
        return False
    try:
        return s.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def drip(addr, stop, replaced):
    """One dripping connection at a time until stop, replacing it when closed."""
    first = True
    while not stop.is_set():
        if not first:
            replaced.append(1)
        first = False
        with socket.create_connection(addr, timeout=10) as s:
            for i in range(len(HEAD)):
                try:
                    s.sendall(HEAD[i : i + 1])
                except OSError:
                    break
                readable, _, _ = select.select([s], [], [], DRIP_EVERY)
                if stop.is_set() or (readable and closed(s)):
                    break


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("addr", help="HOST:PORT of the HTTP port")
    parser.add_argument("--drips", type=int, default=3)
    parser.add_argument("--idle", type=int, default=500)
    parser.add_argument("--secs", type=float, default=5.0)
    parser.add_argument("--scrape-every", type=float, default=0.5)
    args = parser.parse_args()
    host, port = args.addr.rsplit(":", 1)
    addr = (host, int(port))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    end = time.monotonic() + args.secs
    stop = threading.Event()
    replaced = []
    idle = [socket.create_connection(addr, timeout=10) for _ in range(args.idle)]
    drips = [
        threading.Thread(target=drip, args=(addr, stop, replaced), daemon=True)
        for _ in range(args.drips)
    ]
    for d in drips:
        d.start()
    times, failed = [], 0
    while time.monotonic() < end:
        took, good = scrape(addr)
        times.append(took)
        failed += not good
        time.sleep(max(0.0, min(args.scrape_every, end - time.monotonic())))
    stop.set()
    gone = sum(1 for s in idle if closed(s))
    for s in idle:
        s.close()
    ms = [t * 1000 for t in times]
    print(
        f"scrapes {len(ms)} {f'{failed} FAILED' if failed else 'all 200'}, "
        f"median {statistics.median(ms):.1f} ms, max {max(ms):.1f} ms; "
        f"idle closed by the server {gone} of {args.idle}; "
        f"drips {args.drips} ({len(replaced)} replaced)"
    )


if __name__ == "__main__":
    main()
