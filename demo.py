"""
demo.py: a web page that writes a story on request (seed 002 step 8), streamed as it is written.

    python demo.py                                  # the bundled model, http://127.0.0.1:7860
    python demo.py --model out/instruct.bin --port 8000

"Write a story about: [____]", "With: happy | sad ending", the six narrative features as checkboxes,
sampling controls (temperature, top-p, maximum tokens, seed) and a Generate button. The request
becomes a prompt by conditions.build_prompt (the rule the CLI and the trainer share), and the C
engine continues it through the `babyllama` bindings, one piece of text at a time, with seed 001's
end-of-story bias (BOS's logit grows by 0.05 per token past 200: stories end on their own before
the hard maximum). Bad requests and
engine errors show a one-line message on the page, never a stack trace. Gradio's queue bounds the
work: at most --concurrency stories at once (one bl_state each; the weights are shared), at most
--queue waiting; a request body over 64 KB is refused (413) before it is read.

What it does not do: train, or judge the story (evaluate.py). A plain pretrained model answers the
prompt as text to continue; a model fine-tuned on `conditions.py build_instruct` data obeys it.
"""
import argparse
import os
import secrets
import sys
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local demo

import conditions

ROOT = Path(__file__).resolve().parent
DEFAULT_MODEL = ROOT / "models" / "tinystories-cpu.bin"
MAX_TOKENS = 350      # seed 001's hard maximum
END_BIAS, END_BIAS_AFTER = 0.05, 200  # seed 001's end-of-story bias: BOS's logit += 0.05 per token past 200
MAX_SEED = 2**31 - 1
MAX_BODY = 64 * 1024  # bytes in one HTTP request: a request is a short topic and a few settings
CSS = "#story textarea {font-size: 1.05em; line-height: 1.5}"


def check_request(topic, ending, tags, temperature, top_p, max_tokens, seed, seq_len,
                  end_bias=END_BIAS, end_bias_after=END_BIAS_AFTER):
    """The prompt and the sampling settings of a request, or ValueError with a message for a
    person. Values come from the page, but anyone can post to Gradio's API: check them all."""
    if not isinstance(topic, str) or not topic.strip():
        raise ValueError("Please say what the story should be about.")
    if len(topic) > conditions.MAX_TOPIC_CHARS:
        raise ValueError(f"The topic is too long ({len(topic)} characters; at most "
                         f"{conditions.MAX_TOPIC_CHARS}).")
    if ending not in conditions.ENDINGS:
        raise ValueError("Please pick a happy or a sad ending.")
    tags = list(tags or [])
    if len(tags) > len(conditions.FEATURES) or not all(t in conditions.FEATURES for t in tags):
        raise ValueError("Unknown narrative feature.")
    if "BadEnding" in tags:  # the ending line already asks for it
        if ending == "happy":
            raise ValueError("BadEnding asks for a sad ending: pick 'sad' or untick BadEnding.")
        tags.remove("BadEnding")
    try:
        temperature, top_p = float(temperature), float(top_p)
        max_tokens, seed = int(max_tokens), int(seed or 0)
        end_bias, end_bias_after = float(end_bias), int(end_bias_after)
    except (TypeError, ValueError):
        raise ValueError("Sampling settings must be numbers.") from None
    if not 0 <= temperature <= 2 or not 0 <= top_p <= 1:
        raise ValueError("Temperature must be within 0..2 and top-p within 0..1.")
    if not 1 <= max_tokens <= seq_len:
        raise ValueError(f"Max tokens must be within 1..{seq_len}.")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"Seed must be within 0..{MAX_SEED} (0: a new random seed).")
    if not 0 <= end_bias <= 1 or not 0 <= end_bias_after < 2**31:  # a start past the context: off
        raise ValueError("The end-of-story bias must be within 0..1, its start at least 0.")
    prompt = conditions.build_prompt(topic, ending, tags or None)
    return prompt, dict(temperature=temperature, top_p=top_p, max_new_tokens=max_tokens,
                        seed=seed or secrets.randbelow(MAX_SEED) + 1, end_bias=end_bias,
                        end_bias_after=end_bias_after)


def story_stream(model, topic, ending, tags, temperature, top_p, max_tokens, seed,
                 end_bias=END_BIAS, end_bias_after=END_BIAS_AFTER):
    """Yield (story so far, status line) while the engine writes."""
    try:
        prompt, kw = check_request(topic, ending, tags, temperature, top_p, max_tokens, seed,
                                   model.config.seq_len, end_bias, end_bias_after)
    except ValueError as e:
        yield "", f"**Error:** {e}"
        return
    story, t0 = "", time.perf_counter()
    shown = t0
    try:
        for piece in model.generate(prompt, stream=True, **kw):
            story += piece
            if time.perf_counter() - shown > 0.05:  # each update is a message to the browser
                shown = time.perf_counter()
                yield story, "Writing..."
    except Exception as e:  # an engine error is a message on the page, not a stack trace
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        yield story, f"**Error:** the engine failed: {msg}"
        return
    dt = time.perf_counter() - t0
    yield story.strip(), f"Done: {len(story.split())} words in {dt:.1f} s, seed {kw['seed']}."


class LimitBody:
    """ASGI middleware: a request body over MAX_BODY bytes gets 413 before it is read (Gradio
    itself reads any JSON body whole into memory)."""

    def __init__(self, app, max_bytes=MAX_BODY):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_bytes:
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"text/plain"), (b"connection", b"close")]})
            return await send({"type": "http.response.body", "body": b"request too large\n"})
        seen = 0

        async def receive_limited():  # a chunked body without a length: stop reading at the limit
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            return {"type": "http.disconnect"} if seen > self.max_bytes else msg

        return await self.app(scope, receive_limited, send)


def build_page(model, model_name):
    import gradio as gr
    seq_len = model.config.seq_len

    def generate(*args):
        yield from story_stream(model, *args)

    with gr.Blocks(title="babyllama: stories on request", analytics_enabled=False) as page:
        gr.Markdown(f"# babyllama: stories on request\nA tiny Llama 2 ({model_name}) on the "
                    f"CPU, through the C engine.")
        topic = gr.Textbox(label="Write a story about:", elem_id="topic", lines=1, max_lines=3,
                           max_length=conditions.MAX_TOPIC_CHARS,
                           placeholder="a little dog who finds a lost ball")
        ending = gr.Radio([("happy ending", "happy"), ("sad ending", "sad")], value="happy",
                          label="With:", elem_id="ending")
        tags = gr.CheckboxGroup(list(conditions.FEATURES), label="Narrative features (optional)",
                                elem_id="tags")
        with gr.Accordion("Sampling", open=False, elem_id="sampling"):
            with gr.Row():
                temperature = gr.Slider(0, 2, value=0.8, step=0.05, label="Temperature (0: greedy)")
                top_p = gr.Slider(0, 1, value=0.9, step=0.01, label="Top-p")
            with gr.Row():
                max_tokens = gr.Slider(1, seq_len, value=min(MAX_TOKENS, seq_len), step=1,
                                       label="Max tokens")
                seed = gr.Number(0, precision=0, minimum=0, maximum=MAX_SEED,
                                 label="Seed (0: random)", elem_id="seed")
        button = gr.Button("Generate", variant="primary", elem_id="generate")
        status = gr.Markdown("", elem_id="status")
        story = gr.Textbox(label="Story", lines=12, interactive=False, elem_id="story")
        inputs = [topic, ending, tags, temperature, top_p, max_tokens, seed]
        button.click(generate, inputs, [story, status], api_name="generate")
        topic.submit(generate, inputs, [story, status], api_name=False)
    return page


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="checkpoint (.bin v0/v1/v2)")
    ap.add_argument("--tokenizer", default=None,
                    help="tokenizer.bin (default: next to the model, else the repository's)")
    ap.add_argument("--host", default="127.0.0.1", help="address to serve on (default loopback)")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--concurrency", type=int, default=2, help="stories written at once")
    ap.add_argument("--queue", type=int, default=16, help="requests waiting at most")
    args = ap.parse_args(argv)
    if not 1 <= args.port <= 65535:
        sys.exit(f"error: --port must be within 1..65535, got {args.port}")
    if args.concurrency < 1 or args.queue < 1:
        sys.exit("error: --concurrency and --queue must be at least 1")
    try:
        import babyllama
        model = babyllama.Model(args.model, tokenizer=args.tokenizer)
    except ImportError as e:
        sys.exit(f"error: the babyllama bindings are not built ({e}); run `pip install -e .`")
    except FileNotFoundError as e:
        sys.exit(f"error: {e} (choose a checkpoint with --model PATH)")
    except (OSError, ValueError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    try:
        import gradio as gr
    except ImportError:
        sys.exit("error: gradio is not installed; run `pip install -e '.[demo]'`")
    page = build_page(model, Path(args.model).name)
    page.queue(max_size=args.queue, default_concurrency_limit=args.concurrency)
    theme = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"],
                           font_mono=["ui-monospace", "monospace"])  # no web fonts to fetch
    from starlette.middleware import Middleware
    page.launch(server_name=args.host, server_port=args.port, ssr_mode=False, show_error=False,
                footer_links=[], theme=theme, css=CSS, app_kwargs={"middleware": [Middleware(LimitBody)]})


if __name__ == "__main__":
    main()
