"""
cffi build script for `babyllama._babyllama`: the C engine in run.c, compiled as a Python extension.

What it does: declares the API of babyllama.h to cffi (API mode, out-of-line) and compiles the very
same run.c the CLI is built from, with -DBABYLLAMA_NO_MAIN so its main() drops out. One engine, no
second copy. Flags as the Makefile's for ./run (so the logits agree bit for bit): -O3 -std=c11,
-march=native when the compiler accepts it, OpenMP when the compiler and its runtime are present;
BABYLLAMA_CFLAGS (space separated) replaces the optional ones.
What it does not do: anything at import time. setup.py's cffi_modules runs it at install time
(`pip install .` or `pip install -e .`); `python babyllama/_build.py` rebuilds the extension in
place for a checkout (the Makefile does this whenever run.c or babyllama.h changes).
"""
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from cffi import FFI

# setuptools runs this file with __file__ set relative to the project root
ROOT = Path(os.path.abspath(__file__)).parent.parent


def cdef_from_header(text):
    """babyllama.h minus what cffi's cdef cannot read: comments, C++ guards, preprocessor lines
    (integer #defines stay: cffi reads those)."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"#ifdef __cplusplus.*?#endif", "", text, flags=re.S)
    keep = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#") and not re.match(r"#\s*define\s+BL_\w+\s+\d+\s*$", s):
            continue
        keep.append(line)
    return "\n".join(keep)


def cc_accepts(flags, code="int main(void){return 0;}\n"):
    """Whether the C compiler compiles and links `code` with `flags` (used to probe OpenMP, -march)."""
    cc = shlex.split(os.environ.get("CC", "cc"))
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "probe.c"
        src.write_text(code)
        try:
            r = subprocess.run(cc + flags + [str(src), "-o", str(Path(d) / "probe")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return r.returncode == 0


def compile_flags():
    """(compile args, link args): the Makefile's: -O3 -std=c11 -pthread, -march=native and
    -fopenmp when they work."""
    if "BABYLLAMA_CFLAGS" in os.environ:
        extra = shlex.split(os.environ["BABYLLAMA_CFLAGS"])
        return ["-O3", "-std=c11", "-pthread"] + extra, ["-pthread"] + extra  # link with them too (-fopenmp, ...)
    # -std=c11 as the Makefile: strict ISO C turns off FMA contraction, so the bindings compute
    # bit for bit the logits ./run computes. -march=native turns on run_simd.h's AVX-512 kernels
    # where the CPU has them (as for ./run); -pthread for run.c's thread pool.
    cflags, ldflags = ["-O3", "-std=c11", "-pthread"], ["-pthread"]
    if cc_accepts(["-march=native"]):
        cflags.append("-march=native")
    if cc_accepts(["-fopenmp"], "#include <omp.h>\nint main(void){return omp_get_max_threads() < 1;}\n"):
        cflags.append("-fopenmp")
        ldflags.append("-fopenmp")
    return cflags, ldflags


# One binding-only helper besides the engine's API: set the OpenMP thread count of the calling
# thread (what ./run's -T sets) and return the previous one, so Model(threads=) can set it around
# each call and put it back.
SHIM = """
#ifdef _OPENMP
#include <omp.h>
#endif
static int blpy_set_threads(int n) {
#ifdef _OPENMP
    int prev = omp_get_max_threads();
    if (n > 0) omp_set_num_threads(n);
    return prev;
#else
    (void)n;
    return 1;
#endif
}
"""

ffibuilder = FFI()
ffibuilder.cdef(cdef_from_header((ROOT / "babyllama.h").read_text()))
ffibuilder.cdef("static int blpy_set_threads(int n);")
_cflags, _ldflags = compile_flags()
ffibuilder.set_source(
    "babyllama._babyllama",
    '#define BABYLLAMA_NO_MAIN\n#include "run.c"\n' + SHIM,
    include_dirs=[str(ROOT)],
    depends=[str(ROOT / "run.c"), str(ROOT / "run_simd.h"), str(ROOT / "babyllama.h")],
    extra_compile_args=_cflags,
    extra_link_args=_ldflags,
    libraries=["m"],
)

# attention.c (the training kernel behind attention.py) as babyllama._attention: the same flags, with
# fused multiply-adds allowed (nothing here must match ./run bit for bit). With -fopenmp it shares
# PyTorch's OpenMP runtime (see attention.c's run_job).
ATTENTION_API = """
int bl_attention_forward(const float *q, const float *k, const float *v, float *out, float *lse,
                         int B, int T, int H, int KV, int D, float scale, int threads);
int bl_attention_backward(const float *dout, const float *q, const float *k, const float *v, const float *out,
                          const float *lse, float *dq, float *dk, float *dv, int B, int T, int H, int KV, int D,
                          float scale, int threads);
"""
attention_builder = FFI()
attention_builder.cdef(ATTENTION_API)
attention_builder.set_source(
    "babyllama._attention",
    '#include "attention.c"\n',
    include_dirs=[str(ROOT)],
    depends=[str(ROOT / "attention.c")],
    extra_compile_args=_cflags + ["-ffp-contract=fast"],
    extra_link_args=_ldflags,
    libraries=["m"],
)

if __name__ == "__main__":
    # in-place build for a checkout (the Makefile runs this when run.c changes): compile under
    # build/cffi, then move the .so next to this file, where `import babyllama` finds it first
    import shutil
    for builder in (ffibuilder, attention_builder):
        print("compiling", builder._assigned_source[0], file=sys.stderr)
        so = Path(builder.compile(tmpdir=str(ROOT / "build" / "cffi"), verbose=False))
        dest = ROOT / "babyllama" / so.name
        shutil.copyfile(so, str(dest) + ".tmp")
        os.replace(str(dest) + ".tmp", dest)
