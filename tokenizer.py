"""
Tokenizer: a thin wrapper over a sentencepiece model, and its export to llama2.c's `tokenizer.bin`.

What it does: encode text to ids (with or without BOS/EOS), decode ids to text, and write the
`tokenizer.bin` layout that `run.c` reads (FORMATS.md §3): `uint32 max_token_length`, then for every
id `float32 score, int32 len, len bytes`. BOS and EOS are written as "\\n<s>\\n" and "\\n</s>\\n",
U+2581 becomes a space, byte-fallback pieces stay the literal text `<0xHH>` (run.c turns them back
into one byte). Works for Meta's 32k Llama 2 tokenizer and for the ones `tinystories.py train_vocab`
makes. What it does not do: train a tokenizer (that is `tinystories.py train_vocab`).

    python tokenizer.py                          # export ./tokenizer.model -> ./tokenizer.bin
    python tokenizer.py -t data/tok512.model     # -> data/tok512.bin
"""
import argparse
import hashlib
import os
import struct
import sys
from pathlib import Path
from typing import List

from sentencepiece import SentencePieceProcessor

DEFAULT_MODEL = Path(__file__).resolve().parent / "tokenizer.model"


class Tokenizer:
    def __init__(self, model_path=None):
        self.model_path = Path(model_path) if model_path else DEFAULT_MODEL
        if not self.model_path.is_file():
            raise FileNotFoundError(f"tokenizer model not found: {self.model_path}")
        self.sp = SentencePieceProcessor()
        try:
            self.sp.Load(str(self.model_path))
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{self.model_path}: not a sentencepiece model ({e})") from None
        self.n_words = self.sp.vocab_size()
        self.bos_id = self.sp.bos_id()
        self.eos_id = self.sp.eos_id()
        self.pad_id = self.sp.pad_id()

    def encode(self, s: str, bos: bool = True, eos: bool = False) -> List[int]:
        ids = self.sp.encode(s)
        if bos:
            ids = [self.bos_id] + ids
        if eos:
            ids = ids + [self.eos_id]
        return ids

    def encode_batch(self, texts: List[str], bos: bool = True, eos: bool = False, threads: int = -1):
        """Many texts at once, on sentencepiece's own thread pool (threads=-1: every core)."""
        out = self.sp.encode(texts, num_threads=threads)
        pre, post = ([self.bos_id] if bos else []), ([self.eos_id] if eos else [])
        return [pre + ids + post for ids in out]

    def decode(self, ids: List[int]) -> str:
        return self.sp.decode(list(ids))

    def identity(self) -> dict:
        """What a checkpoint or a shard records so that a mismatched tokenizer is refused later."""
        digest = hashlib.sha256(self.model_path.read_bytes()).hexdigest()
        return {"path": str(self.model_path), "sha256": digest, "vocab_size": self.n_words}

    def pieces_and_scores(self):
        """The (bytes, score) pairs that tokenizer.bin holds, id by id."""
        out = []
        for i in range(self.n_words):
            piece = self.sp.id_to_piece(i)
            if i == self.bos_id:
                piece = "\n<s>\n"
            elif i == self.eos_id:
                piece = "\n</s>\n"
            out.append((piece.replace("\u2581", " ").encode("utf-8"), self.sp.get_score(i)))
        return out

    def export(self, out_path=None) -> Path:
        """Write tokenizer.bin (default: next to the .model) atomically; return its path."""
        out_path = Path(out_path) if out_path else self.model_path.with_suffix(".bin")
        entries = self.pieces_and_scores()
        max_len = max(len(b) for b, _ in entries)
        tmp = out_path.with_name(out_path.name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(struct.pack("<I", max_len))
                for b, score in entries:
                    f.write(struct.pack("<fi", score, len(b)))
                    f.write(b)
            os.replace(tmp, out_path)
        except OSError as e:  # disk full, read-only: name the file, leave no .tmp behind
            tmp.unlink(missing_ok=True)
            raise OSError(f"cannot write {out_path}: {e.strerror}") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return out_path


def read_tokenizer_bin(path, vocab_size):
    """Read a tokenizer.bin back: (max_token_length, [bytes], [score]). Used by tests and tools."""
    data = Path(path).read_bytes()
    (max_len,) = struct.unpack_from("<I", data, 0)
    off, pieces, scores = 4, [], []
    for _ in range(vocab_size):
        score, n = struct.unpack_from("<fi", data, off)
        off += 8
        if n < 0 or off + n > len(data):
            raise ValueError(f"{path}: token length {n} runs past the end of the file")
        pieces.append(data[off:off + n])
        scores.append(score)
        off += n
    return max_len, pieces, scores


# ---- BinTokenizer: llama2.c's tokenizer.bin rules, for models that come without a .model ----------
class BinTokenizer:
    """Encode and decode exactly as llama2.c's run.c does, from a tokenizer.bin alone (FORMATS.md §3-4).

    encode: a dummy-prefix space, each UTF-8 character looked up (missing ones fall back to byte
    tokens, id = byte + 3), then the adjacent pair whose merge is in the vocabulary with the highest
    score is merged (first one on ties) until none is left. decode_piece: one leading space is dropped
    after BOS, `<0xHH>` becomes that byte, and a single non-printable byte gives nothing (run.c's
    safe_printf). Returns bytes, because pieces may be fragments of a UTF-8 character."""

    def __init__(self, path, vocab_size):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {self.path}")
        self.max_token_length, self.pieces, self.scores = read_tokenizer_bin(self.path, vocab_size)
        self.n_words, self.bos_id, self.eos_id = vocab_size, 1, 2
        self.lookup = {}
        for i, p in enumerate(self.pieces):
            self.lookup.setdefault(p, i)  # run.c's sorted-vocab search: any id of a duplicate piece

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> List[int]:
        ids = [self.bos_id] if bos else []
        if text:
            ids.append(self.lookup[b" "])
        for ch in text:
            b = ch.encode("utf-8")
            ids += [self.lookup[b]] if b in self.lookup else [x + 3 for x in b]
        while True:  # run.c also tries BOS + first piece; harmless, kept for exactness
            best, best_i, best_id = float("-inf"), -1, -1
            for i in range(len(ids) - 1):
                j = self.lookup.get(self.pieces[ids[i]] + self.pieces[ids[i + 1]])
                if j is not None and self.scores[j] > best:
                    best, best_i, best_id = self.scores[j], i, j
            if best_i < 0:
                break
            ids[best_i:best_i + 2] = [best_id]
        return ids + ([self.eos_id] if eos else [])

    def decode_piece(self, prev: int, token: int) -> bytes:
        piece = self.pieces[token]
        if prev == self.bos_id and piece.startswith(b" "):
            piece = piece[1:]
        if len(piece) == 6 and piece.startswith(b"<0x") and piece.endswith(b">"):
            try:
                piece = bytes([int(piece[3:5], 16)])
            except ValueError:
                pass
        if len(piece) == 1 and not (0x20 <= piece[0] < 0x7F or piece[0] in b" \t\n\v\f\r"):
            return b""
        return piece

    def decode(self, ids: List[int]) -> bytes:
        """Bytes that run.c prints for a sequence that starts with ids[0] (usually BOS)."""
        return b"".join(self.decode_piece(a, b) for a, b in zip(ids, ids[1:]))


def main(argv=None):
    ap = argparse.ArgumentParser(description="Export a sentencepiece model to llama2.c's tokenizer.bin")
    ap.add_argument("-t", "--tokenizer-model", default=str(DEFAULT_MODEL),
                    help="sentencepiece .model to export (default: the project's tokenizer.model)")
    ap.add_argument("-o", "--output", default=None, help="output path (default: the .model's path with .bin)")
    args = ap.parse_args(argv)
    try:
        out = Tokenizer(args.tokenizer_model).export(args.output)
    except (FileNotFoundError, ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
