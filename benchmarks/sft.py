"""Supervised fine-tuning teaches: exact match on held-out prompts before and after, against an unmasked control.

The whole path on a CPU, in a temporary folder:
1. pretrain a small byte-level base model (d_model 64, 2 layers, context 128) on Tiny Shakespeare;
2. generate conversations with a checkable answer: "reverse abc" -> "cba", three letters out of 16; 2,700
   words for training, 100 for validation and 200 held out (never seen in training) for the test;
3. fine-tune the base on them (`[data] format = "chat"`, loss on the assistant's tokens), and, as the control,
   the same run with `data.loss_on = "all"` (the loss on every token, prompt included);
4. exact match on the 200 held-out prompts, greedy: the base model (prompted with the template's text, which
   it was never taught), the fine-tuned model and the control. Per seed, then the mean.

    python benchmarks/sft.py                     # 3 seeds, 1000 fine-tuning steps
    python benchmarks/sft.py --seeds 1 --steps 200
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import lmkit
from lmkit.chat.template import render_text
from lmkit.checkpoint import load_model_and_tokenizer
from lmkit.generate import chat_reply, generate
from lmkit.tokenizer import Tokenizer
from lmkit.training.loop import train_from_files

SHAKESPEARE = Path(lmkit.__file__).parent / "data" / "tinyshakespeare.txt"
LETTERS = "abcdefghijklmnop"
MODEL = {"vocab_size": 257, "context_length": 128, "d_model": 64, "num_layers": 2, "num_heads": 4}


def toml(tables: dict[str, dict]) -> str:
    return "".join(f"[{t}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in f.items()) for t, f in tables.items())


def conversation(word: str) -> dict:
    return {"messages": [{"role": "user", "content": f"reverse {word}"}, {"role": "assistant", "content": word[::-1]}]}


def write_data(folder: Path) -> list[str]:
    """Tokenizer, pretraining tokens, and the conversation files; returns the held-out test words."""
    Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"]).save(folder / "tokenizer.json")
    ids = np.frombuffer(SHAKESPEARE.read_bytes(), dtype=np.uint8).astype(np.uint16)
    np.save(folder / "train.npy", ids[: len(ids) * 9 // 10]), np.save(folder / "val.npy", ids[len(ids) * 9 // 10 :])
    rng = random.Random(0)
    words: set[str] = set()
    while len(words) < 3000:
        words.add("".join(rng.choice(LETTERS) for _ in range(3)))
    ordered = sorted(words)
    rng.shuffle(ordered)
    for name, part in (("train", ordered[:2700]), ("val", ordered[2700:2800])):
        (folder / f"chat.{name}.jsonl").write_text("".join(json.dumps(conversation(w)) + "\n" for w in part))
    return ordered[2800:3000]


def exact_match(checkpoint: Path, words: list[str], chat: bool) -> float:
    """The share of held-out prompts answered exactly (greedy, at most 6 new tokens)."""
    model, tokenizer = load_model_and_tokenizer(checkpoint, "cpu")
    right = 0
    for word in words:
        messages = conversation(word)["messages"][:1]
        if chat:
            answer = "".join(chat_reply(model, tokenizer, messages, temperature=0, max_new_tokens=6))
        else:  # the base model has no template tokens: it reads the template's text as plain bytes
            prompt = render_text(messages, add_generation_prompt=True)
            answer = generate(model, tokenizer, prompt, temperature=0, max_new_tokens=6, stop=["<|im_end|>"]).text
        right += answer.strip() == word[::-1]
    return right / len(words)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1000, help="fine-tuning steps")
    parser.add_argument("--base-steps", type=int, default=300)
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        held_out = write_data(folder)
        data = {"train": str(folder / "train.npy"), "val": str(folder / "val.npy"),
                "tokenizer": str(folder / "tokenizer.json")}  # fmt: skip
        train = {"batch_size": 16, "eval_batches": 2, "device": "cpu", "threads": 1}
        steps = {"steps": args.base_steps, "eval_every": args.base_steps}
        pretraining = {**train, **steps, "out_dir": str(folder / "base")}
        base = {"data": data, "model": MODEL, "optim": {"lr": 3e-3}, "train": pretraining}
        (folder / "base.toml").write_text(toml(base))
        train_from_files(folder / "base.toml", show_progress=False)
        base_score = exact_match(folder / "base" / "last.pt", held_out, chat=False)
        rows = []
        for seed in range(args.seeds):
            scores = {}
            for arm, loss_on in (("sft", "assistant"), ("control", "all")):
                out = folder / f"{arm}-{seed}"
                chat_data = {**data, "train": str(folder / "chat.train.jsonl"), "val": str(folder / "chat.val.jsonl"),
                             "format": "chat", "loss_on": loss_on}  # fmt: skip
                tables = {"data": chat_data, "model": {**MODEL, "vocab_size": 259}, "optim": {"lr": 3e-3},
                          "train": {**train, "steps": args.steps, "eval_every": args.steps, "seed": seed,
                                    "out_dir": str(out), "init_from": str(folder / "base" / "last.pt")}}  # fmt: skip
                (folder / f"{arm}.toml").write_text(toml(tables))
                train_from_files(folder / f"{arm}.toml", show_progress=False)
                scores[arm] = exact_match(out / "last.pt", held_out, chat=True)
            rows.append(scores)
            print(
                f"seed {seed}: base {base_score:.1%}, fine-tuned {scores['sft']:.1%}, control {scores['control']:.1%}"
            )
    for arm, label in (("sft", "fine-tuned (loss on the assistant)"), ("control", "control (loss on everything)")):
        values = [row[arm] for row in rows]
        spread = f" ± {statistics.stdev(values):.1%}" if len(values) > 1 else ""
        print(f"{label}: {statistics.mean(values):.1%}{spread} exact match on {len(held_out)} held-out prompts")
    seconds = time.perf_counter() - start
    print(f"base model: {base_score:.1%}; {args.seeds} seeds, {args.steps} steps each; {seconds:.0f} s in all")


if __name__ == "__main__":
    main()
