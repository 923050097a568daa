#!/usr/bin/env python3
"""Peak memory of one decode at the pixel limit: a 7000x7000 (49 MP) 16-bit RGBA PNG with
EXIF orientation 6 (a 90-degree turn), embedded once in a fresh backend; prints the
backend's peak RSS (VmHWM) before and after. README, "Security and limits".
Usage: scripts/bench/decode_peak_memory.py   (the project's cluster must be running)
"""
import struct, zlib, sys, os, time
import numpy as np
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/, for photos.py
import photos
h = w = 7000
y = np.arange(h, dtype=np.uint32)[:, None]
x = np.arange(w, dtype=np.uint32)[None, :]
px = np.empty((h, w, 4), dtype=">u2")
px[..., 0] = ((x // 64) * 300) & 0xFFFF
px[..., 1] = ((y // 64) * 300) & 0xFFFF
px[..., 2] = 0x4000
px[..., 3] = 0xC000
raw = b"".join(b"\x00" + px[r].tobytes() for r in range(h))
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
tiff = b"MM\x00\x2a\x00\x00\x00\x08" + struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) + b"\x00\x00\x00\x00"
png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 6, 0, 0, 0)) + chunk(b"eXIf", tiff)
       + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
print("png bytes", len(png))
def hwm(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(("VmHWM", "VmRSS")):
            print("  ", line.strip())
with photos.connect() as c:
    pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
    c.execute("SELECT pg_vision_warmup(ARRAY['efficientnet'])")
    print("after warmup"); hwm(pid)
    print(c.execute("SELECT * FROM image_info(%s)", (png,)).fetchone())
    print("after image_info (bytes received)"); hwm(pid)
    t = time.time(); c.execute("SELECT embed_efficientnet(%s)", (png,)); print("embed s", round(time.time() - t, 2))
    print("after embed"); hwm(pid)
