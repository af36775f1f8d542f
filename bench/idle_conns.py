#!/usr/bin/env python3
"""Opens N keep-alive connections to HOST:PORT, sends one GET on each, reads the response, and
keeps every connection open (idle) until killed or --hold seconds pass.

usage: idle_conns.py HOST:PORT N [--hold SECONDS] [--batch K]

Prints "ready OK ERRORS" on stdout once every connection has its response (run.sh waits for that
line, then measures the proxy's memory). Needs `ulimit -n` above N.
"""
import asyncio
import sys


async def one(host, port, sem, conns, errors):
    async with sem:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
            w.write(b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: idle_conns\r\n\r\n")
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            low = head.lower()
            if not head.startswith(b"HTTP/1.1 2"):
                raise ValueError(head.split(b"\r\n", 1)[0])
            if b"transfer-encoding: chunked" in low:
                await asyncio.wait_for(r.readuntil(b"0\r\n\r\n"), 10)
            else:
                n = 0
                for line in low.split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        n = int(line.split(b":", 1)[1])
                await asyncio.wait_for(r.readexactly(n), 10)
            conns.append((r, w))
        except Exception as e:  # counted, not fatal: the caller reports it
            errors.append(repr(e))


async def main():
    args = sys.argv[1:]
    if len(args) < 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        sys.exit(2)
    host, port = args[0].rsplit(":", 1)
    n = int(args[1])
    hold = float(args[args.index("--hold") + 1]) if "--hold" in args else 3600.0
    batch = int(args[args.index("--batch") + 1]) if "--batch" in args else 500
    sem = asyncio.Semaphore(batch)
    conns, errors = [], []
    await asyncio.gather(*(one(host, int(port), sem, conns, errors) for _ in range(n)))
    print(f"ready {len(conns)} {len(errors)}", flush=True)
    if errors:
        print("first error:", errors[0], file=sys.stderr, flush=True)
    await asyncio.sleep(hold)
    for _, w in conns:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
