"""A thread-pool server of PROTOCOL.md that answers the way the article's
servers do: one send() per answer byte, Nagle's algorithm left on.

It is here to show what that costs a client (the README's `concur client`
run against it), not as a model: python3 tools/bytewise_server.py PORT [-n N]
"""

import argparse
import socket
from concurrent.futures import ThreadPoolExecutor


def serve(conn):
    with conn:
        conn.sendall(b"*")
        in_message = False
        while True:
            data = conn.recv(1024)
            if not data:
                return
            for b in data:
                if not in_message:
                    in_message = b == ord("^")
                elif b == ord("$"):
                    in_message = False
                else:
                    conn.send(bytes([(b + 1) % 256]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("-n", type=int, default=2, help="worker threads")
    args = parser.parse_args()
    pool = ThreadPoolExecutor(args.n)
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", args.port))
        listener.listen(15)
        while True:
            conn, _ = listener.accept()
            pool.submit(serve, conn)


if __name__ == "__main__":
    main()
