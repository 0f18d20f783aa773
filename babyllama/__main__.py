"""
`python -m babyllama model.bin -i "Once upon a time"`: tell a story from Python, streamed.

The flags are ./run's (-t -p -k -s -z -i -T, and -a -e -g -E -S: a story on request, with the
end-of-story bias), except -n, which here counts the NEW tokens
(generate()'s max_new_tokens) rather than positions. What it does not do: chat mode or timing
(use ./run for those).
"""
import argparse
import sys

from . import Error, Model, build_prompt


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
    ap.add_argument("-a", dest="topic", default=None, help="topic: ask for a story about it (needs -e)")
    ap.add_argument("-e", dest="ending", default=None, help="ending: happy|sad (needs -a)")
    ap.add_argument("-g", dest="tags", default=None,
                    help="tags, comma-separated: BadEnding,Conflict,Dialogue,Foreshadowing,MoralValue,Twist")
    ap.add_argument("-E", dest="end_bias", type=float, default=0.0,
                    help="end-of-story bias (default 0: off): BOS's logit += E * (n - S) for new token n > S")
    ap.add_argument("-S", dest="end_bias_after", type=int, default=200,
                    help="new tokens before the end-of-story bias starts (default 200)")
    a = ap.parse_args(argv)
    try:
        with Model(a.checkpoint, a.tokenizer, threads=a.threads) as m:
            tags = None if a.tags is None else a.tags.split(",")  # as ./run's -g
            kw = dict(topic=a.topic, ending=a.ending, tags=tags)
            pieces = m.generate(a.prompt, max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                                top_p=a.top_p, top_k=a.top_k, seed=a.seed, stream=True,
                                end_bias=a.end_bias, end_bias_after=a.end_bias_after, **kw)
            asked = a.topic is not None or a.ending is not None or tags is not None
            head = build_prompt(**kw) if asked else ""
            sys.stdout.write(m.decode(m.encode(head + a.prompt)))
            for piece in pieces:
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
    except (Error, ValueError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
