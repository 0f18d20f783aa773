"""
`python -m babyllama model.bin -i "Once upon a time"`: tell a story from Python, streamed.

The flags are ./run's (-t -p -k -s -z -i -T), except -n, which here counts the NEW tokens
(generate()'s max_new_tokens) rather than positions. What it does not do: chat mode or timing
(use ./run for those).
"""
import argparse
import sys

from . import Error, Model


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m babyllama", description="Tell a story with the C engine, from Python.")
    ap.add_argument("checkpoint", help="model .bin (llama2.c version 0, 1 or 2)")
    ap.add_argument("-z", dest="tokenizer", default=None,
                    help="tokenizer.bin (default: next to the model, else the repository's)")
    ap.add_argument("-i", dest="prompt", default="", help="prompt")
    ap.add_argument("-n", dest="max_new_tokens", type=int, default=256, help="new tokens at most (default 256)")
    ap.add_argument("-t", dest="temperature", type=float, default=1.0, help="temperature (0: greedy)")
    ap.add_argument("-p", dest="top_p", type=float, default=0.9, help="top-p (0 or 1: off)")
    ap.add_argument("-k", dest="top_k", type=int, default=0, help="top-k (0: off)")
    ap.add_argument("-s", dest="seed", type=int, default=None, help="seed (default: random)")
    ap.add_argument("-T", dest="threads", type=int, default=None, help="threads (default: every core)")
    a = ap.parse_args(argv)
    try:
        with Model(a.checkpoint, a.tokenizer, threads=a.threads) as m:
            sys.stdout.write(m.decode(m.encode(a.prompt)))
            for piece in m.generate(a.prompt, max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                                    top_p=a.top_p, top_k=a.top_k, seed=a.seed, stream=True):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
    except (Error, ValueError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
