"""
demo.py under load and abuse, over HTTP on 127.0.0.1 only (Gradio's API, no browser): oversized
requests are refused (a topic over the limit, absurd settings, a request body of megabytes: HTTP 413
before it is read), and 20 simultaneous requests are all answered (a story, or Gradio's "queue is
full" once more than --queue wait) while the server's thread count stays bounded (requests wait in
the queue; they do not each get a thread) and it keeps serving afterwards.
What it does not test: the page in a browser (tests/test_demo.py does).
"""
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import AIDREAMS, ROOT, need

BUNDLED = ROOT / "models" / "tinystories-cpu.bin"
CONCURRENCY, QUEUE = 2, 16


def _threads(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


def _rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.fixture(scope="module")
def server():
    pytest.importorskip("gradio", reason="gradio is not installed (pip install -e '.[demo]')")
    pytest.importorskip("babyllama", reason="the babyllama bindings are not built")
    if BUNDLED.is_file():
        model = [str(BUNDLED)]
    else:
        model = [str(need(AIDREAMS / "aidreams260K.bin")), "--tokenizer", str(AIDREAMS / "tok512.bin")]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, str(ROOT / "demo.py"), "--model", *model, "--port", str(port),
                             "--host", "127.0.0.1", "--concurrency", str(CONCURRENCY), "--queue", str(QUEUE)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"demo.py exited with {proc.returncode}: {log.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2):
                    break
            except OSError:
                if time.time() > deadline:
                    pytest.fail("demo.py did not serve its page within 90 s")
                time.sleep(0.5)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def post(url, body, timeout=60):
    """POST raw bytes as JSON; (status, parsed reply or text)."""
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def ask(url, data, timeout=120):
    """One request through Gradio's API: ('complete', [story, status]) or ('error', message)."""
    status, reply = post(url + "gradio_api/call/generate", json.dumps({"data": data}).encode(), timeout)
    if status != 200:
        return "http", f"{status} {reply}"
    with urllib.request.urlopen(url + f"gradio_api/call/generate/{reply['event_id']}", timeout=timeout) as r:
        event = None
        for line in r.read().decode().splitlines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event in ("complete", "error"):
                return event, json.loads(line[6:]) if event == "complete" else line[6:]
    return "none", None


def request(topic="a dog and a ball", ending="happy", tags=(), temperature=0.8, top_p=0.9, max_tokens=60, seed=1):
    return [topic, ending, list(tags), temperature, top_p, max_tokens, seed]


def test_oversized_and_absurd_requests_are_refused(server):
    url, proc = server
    rss0 = _rss_mb(proc.pid)
    cases = {
        "topic over 500 characters": (request(topic="x" * 501), "too long"),
        "max_tokens 10^9": (request(max_tokens=10**9), "Max tokens"),
        "temperature 1e30": (request(temperature=1e30), "Temperature"),
        "seed -1": (request(seed=-1), "Seed"),
        "unknown ending": (request(ending="x" * 1000), "ending"),
        "200 tags": (request(tags=["Dialogue"] * 200), "feature"),
        "topic of a NUL and controls": (request(topic="\0\1\2"), ""),
    }
    for name, (data, says) in cases.items():
        kind, reply = ask(url, data)
        assert kind in ("complete", "error"), f"{name}: {kind} {reply}"
        if kind == "complete":
            assert reply[1].startswith("**Error:**") and says in reply[1], f"{name}: {reply}"
    # a body of megabytes is refused on its Content-Length, before a byte of it is sent
    port = int(url.rsplit(":", 1)[1].strip("/"))
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"POST /gradio_api/call/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 4194304\r\n\r\n")
        head = s.recv(200).decode(errors="replace")
    assert head.startswith("HTTP/1.1 413"), f"a 4 MB request got {head[:100]!r}"
    # and one actually sent: refused too (413, or the connection closed while sending)
    big = json.dumps({"data": request(topic="x" * (4 << 20))}).encode()
    try:
        status, reply = post(url + "gradio_api/call/generate", big)
    except (urllib.error.URLError, ConnectionError) as e:
        status, reply = 413, str(e)
    assert status == 413, f"a 4 MB request got HTTP {status}: {str(reply)[:200]}"
    assert _rss_mb(proc.pid) - rss0 < 100, "the server's memory grew by the oversized request"
    kind, reply = ask(url, request(max_tokens=20))
    assert kind == "complete" and reply[1].startswith("Done"), (kind, reply)


def test_twenty_concurrent_requests(server):
    url, proc = server
    base_threads = _threads(proc.pid)
    peak = [base_threads]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], _threads(proc.pid))
            time.sleep(0.02)

    w = threading.Thread(target=watch)
    w.start()
    t0 = time.time()
    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(ask, url, request(topic=f"story number {i}", max_tokens=120, seed=i + 1))
                   for i in range(20)]
        results = [f.result(timeout=300) for f in futures]
    stop.set()
    w.join()
    took = time.time() - t0
    stories = [r for k, r in results if k == "complete" and r[1].startswith("Done")]
    full = [r for k, r in results if k in ("error", "http") and "queue is full" in str(r).lower()]
    other = [(k, r) for k, r in results if not (k == "complete" and r[1].startswith("Done")) and
             not (k in ("error", "http") and "queue is full" in str(r).lower())]
    print(f"20 requests in {took:.1f} s: {len(stories)} stories, {len(full)} 'queue full', "
          f"threads {base_threads} -> peak {peak[0]}")
    assert not other, other[:3]
    assert len(stories) >= QUEUE + CONCURRENCY, f"only {len(stories)} of 20 got a story"
    assert len(set(s[0] for s in stories)) > 1  # different seeds, different stories
    # the work waits in Gradio's queue (2 running, 16 waiting, the rest refused): threads stay
    # within anyio's pool of 40 that serves the connections, not one story thread per request
    assert peak[0] - base_threads < 40, f"threads grew from {base_threads} to {peak[0]}"
    assert len(full) <= 20 - QUEUE - CONCURRENCY, f"{len(full)} refused with {QUEUE + CONCURRENCY} places"
    kind, reply = ask(url, request(max_tokens=20))
    assert kind == "complete" and reply[1].startswith("Done"), (kind, reply)
    assert proc.poll() is None
