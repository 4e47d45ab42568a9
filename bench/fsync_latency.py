"""fsync latency of the disk under a path: 32 KiB appends, each fsync'd, for 10 s; prints p50/p99/p999/max.
Used in docs/device-benchmark.md to tell the hub's commit stalls from the disk's.

    python3 bench/fsync_latency.py /path/on/the/disk/probe.bin
"""
import os, time, sys
path = sys.argv[1]
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
lat = []
end = time.time() + 10
buf = b"x" * 32768
while time.time() < end:
    os.write(fd, buf)
    t = time.perf_counter(); os.fsync(fd); lat.append(time.perf_counter() - t)
lat.sort()
q = lambda p: lat[min(len(lat)-1, int(p*len(lat)))] * 1000
print(f"fsyncs {len(lat)} p50 {q(0.5):.2f} ms p99 {q(0.99):.2f} ms p999 {q(0.999):.2f} ms max {lat[-1]*1000:.2f} ms")
os.close(fd); os.unlink(path)
