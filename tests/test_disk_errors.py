"""
Disk full and read-only output: every writer of the project (export.py, tokenizer.py's export,
tinystories.py pretokenize, train.py's checkpoint) must stop with one clear `error: ...` line naming
the file, exit non-zero, and leave nothing under the final name (no half-written file; the .tmp is
removed too).

How the faults are made, in a child process only: disk full is RLIMIT_FSIZE (writes past the limit
fail with EFBIG; Python ignores SIGXFSZ), and, where this machine lets us mount (root in a
privileged container), a real 64 KB tmpfs that fills up (ENOSPC). A read-only directory is a tmpfs
mounted read-only where mounting works (chmod does not stop root), else a path below a regular file
(ENOTDIR), which no user can write to.
What it does not test: the C engine, which writes no files.
"""
import os
import resource
import subprocess
import sys
import uuid

import pytest

from conftest import ROOT, write_stories

PY = sys.executable
SEED_BIN = ROOT / "tests" / "fuzz" / "corpus" / "checkpoint" / "v1_shared.bin"
TINY = ["--dim", "32", "--n_layers", "1", "--n_heads", "4", "--n_kv_heads", "4", "--max_seq_len", "32", "--batch_size", "2",
        "--gradient_accumulation_steps", "1", "--dtype", "float32", "--device", "cpu", "--threads", "1",
        "--max_iters", "2", "--eval_interval", "1", "--eval_iters", "1", "--log_interval", "1"]


def _mount(target, opts):
    target.mkdir(parents=True, exist_ok=True)
    if os.environ.get("BABYLLAMA_NO_MOUNT"):  # try the fallbacks a machine without mount gets
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(target)], capture_output=True)
    return r.returncode == 0


@pytest.fixture(scope="module")
def mounts(tmp_path_factory):
    """{'full': dir on a 64 KB tmpfs or None, 'ro': dir on a read-only tmpfs or None}"""
    base = tmp_path_factory.mktemp("mnt")
    out = {"full": base / "full", "ro": base / "ro"}
    made = {k: _mount(p, o) for (k, p), o in zip(out.items(), ("size=64k", "ro,size=64k"))}
    yield {k: (p if made[k] else None) for k, p in out.items()}
    for k, p in out.items():
        if made[k]:
            subprocess.run(["umount", "-l", str(p)], capture_output=True)


@pytest.fixture(scope="module")
def stories(tmp_path_factory):
    """About 300 stories of real TinyStories text (a few hundred KB)."""
    return write_stories(tmp_path_factory.mktemp("txt") / "stories.txt", 300)


@pytest.fixture(scope="module")
def data_dir(stories, tmp_path_factory):
    from tinystories import pretokenize
    return pretokenize([stories], out_dir=tmp_path_factory.mktemp("data") / "tok", progress=False, workers=1)


def fsize_limit(n):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (n, n))


def writers(stories, data_dir):
    """name -> (argv given the output path, the final file it makes under that path, fsize limit)"""
    return {
        "export v0": (lambda o: [ROOT / "export.py", o, "--bin", SEED_BIN, "--version", "0"], "", 4096),
        "export v2": (lambda o: [ROOT / "export.py", o, "--bin", SEED_BIN, "--version", "2", "--group_size", "8"], "", 2048),
        "tokenizer export": (lambda o: [ROOT / "tokenizer.py", "-t", ROOT / "tokenizer.model", "-o", o], "", 8192),
        "pretokenize": (lambda o: [ROOT / "tinystories.py", "pretokenize", stories, "--out_dir", o, "--workers", "1"],
                        "train_00000.bin", 16384),
        "train checkpoint": (lambda o: [ROOT / "train.py", *TINY, "--data_dir", data_dir, "--out_dir", o],
                             "ckpt.pt", 65536),
    }


def check_failed_cleanly(p, final, what, named):
    err = p.stderr.strip().splitlines()
    assert p.returncode not in (0,) and p.returncode > 0, f"{what}: exit {p.returncode}\n{p.stderr[-2000:]}"
    assert err and err[-1].startswith("error: "), f"{what}: last stderr line is not 'error: ...':\n{p.stderr[-2000:]}"
    assert "Traceback" not in p.stderr, f"{what}: a traceback instead of one line:\n{p.stderr[-3000:]}"
    print(f"{what}: {err[-1]}")
    assert named in err[-1], f"{what}: the error does not name {named}: {err[-1]}"
    if final is not None:
        assert not final.exists(), f"{what}: {final} exists after the failure"
        tmp = final.with_name(final.name + ".tmp")
        assert not tmp.exists(), f"{what}: {tmp} left behind"


def run(argv, **kw):
    return subprocess.run([PY, *map(str, argv)], cwd=ROOT, capture_output=True, text=True, timeout=180, **kw)


NAMES = ["export v0", "export v2", "tokenizer export", "pretokenize", "train checkpoint"]


@pytest.mark.parametrize("name", NAMES)
def test_disk_full_and_read_only(name, stories, data_dir, mounts, tmp_path):
    make, final, limit = writers(stories, data_dir)[name]
    leaf = "out" if final else "out.bin"
    # read-only: a read-only tmpfs where mounting works, else below a regular file
    if mounts["ro"] is not None:
        ro = mounts["ro"] / uuid.uuid4().hex / leaf
    else:
        (tmp_path / "file").write_text("a file, not a directory")
        ro = tmp_path / "file" / leaf
    p = run(make(ro))
    check_failed_cleanly(p, None, f"{name} into a read-only place ({ro})", ro.parent.name)
    assert not ro.exists()

    # disk full: a real full tmpfs where mounting works (train.py's metrics.jsonl would fill it
    # before its checkpoint: that one gets a file size limit), else RLIMIT_FSIZE
    if mounts["full"] is None or name == "train checkpoint":
        out = tmp_path / leaf
        p = run(make(out), preexec_fn=fsize_limit(limit))
        check_failed_cleanly(p, out / final if final else out, f"{name} under RLIMIT_FSIZE={limit}", out.name)
        return
    full = mounts["full"] / uuid.uuid4().hex
    full.mkdir()
    ballast = full / "ballast"
    try:
        with open(ballast, "wb") as f:  # leave `limit` bytes free: the writer starts, then runs out
            f.write(b"\0" * (64 * 1024 - limit))
    except OSError:
        pass
    out = full / leaf
    p = run(make(out))
    check_failed_cleanly(p, out / final if final else out, f"{name} onto a full disk", out.name)
    ballast.unlink()
    for f in sorted(full.rglob("*")):
        assert not f.name.endswith(".tmp"), f"{name}: {f} left on the full disk"
