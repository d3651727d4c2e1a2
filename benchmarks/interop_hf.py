"""`lmkit export hf` / `lmkit import hf` on a GPT-2-small-sized Llama, against transformers doing the same I/O.

A randomly initialised lmkit model of GPT-2 small's size with grouped-query attention (vocab 50257, d_model
768, 12 layers, 12 heads, 4 key/value heads, d_ff 2048, context 1024; 153 M parameters, float32), on the CPU:
- export: `export_hf` from the checkpoint file to a folder, against transformers' `save_pretrained` of the
  loaded model to another folder (the same bytes written, without the conversion);
- import: `import_hf` from that folder to a checkpoint, against transformers' `from_pretrained` of it followed
  by `torch.save` of its state dict to a file (the same job: the folder's weights in one PyTorch file, synced);
- exactness: the largest difference between lmkit's logits and the exported model's in transformers, and
  between the imported checkpoint's logits and the original's, on 2 x 128 random ids.
Each timing is the best of `--rounds`, alternating lmkit and transformers.

    python benchmarks/interop_hf.py
    python benchmarks/interop_hf.py --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from lmkit.checkpoint import model_state, read_checkpoint, write_checkpoint
from lmkit.interop.hf import export_hf, import_hf
from lmkit.model import ModelConfig, TransformerLM
from lmkit.tokenizer import Tokenizer

SHAPE = ModelConfig(
    vocab_size=50257, context_length=1024, d_model=768, num_layers=12, num_heads=12, num_kv_heads=4, d_ff=2048
)


def best_of(rounds: int, job) -> float:
    """The fastest of `rounds` runs of job(), in seconds."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        job()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    work = Path(tempfile.mkdtemp(prefix="lmkit-interop-bench-"))
    try:
        torch.manual_seed(0)
        model = TransformerLM(SHAPE).eval()
        tokenizer = Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"])
        ckpt = work / "model.pt"
        config = {"model": SHAPE.model_dump(mode="json")}
        write_checkpoint(model_state(model), None, 0, ckpt, config=config, tokenizer_json=tokenizer.to_json())
        params = sum(p.numel() for p in model.parameters())
        print(f"model: {params / 1e6:.1f} M parameters, float32, {args.threads} threads")

        def lmkit_export() -> None:
            shutil.rmtree(work / "hf", ignore_errors=True)
            export_hf(ckpt, work / "hf")

        lmkit_export()
        hf_model = AutoModelForCausalLM.from_pretrained(work / "hf").eval()

        def hf_save() -> None:
            shutil.rmtree(work / "hf_saved", ignore_errors=True)
            hf_model.save_pretrained(work / "hf_saved")

        def lmkit_import() -> None:
            import_hf(work / "hf", work / "imported.pt", force=True)

        def hf_load() -> None:
            # The same job as an import: the folder's weights into one PyTorch file on disk, synced.
            with open(work / "hf_state.pt", "wb") as handle:
                torch.save(AutoModelForCausalLM.from_pretrained(work / "hf").state_dict(), handle)
                handle.flush()
                os.fsync(handle.fileno())

        timings = {}
        for name, job in (("export", lmkit_export), ("save_pretrained", hf_save)):
            timings[name] = best_of(args.rounds, job)
        for name, job in (("import", lmkit_import), ("from_pretrained + torch.save", hf_load)):
            timings[name] = best_of(args.rounds, job)
        for ours, theirs in (("export", "save_pretrained"), ("import", "from_pretrained + torch.save")):
            ratio = timings[ours] / timings[theirs]
            print(
                f"{ours} hf: lmkit {timings[ours]:.2f} s; transformers {theirs} {timings[theirs]:.2f} s ({ratio:.2f}x)"
            )

        ids = torch.randint(0, SHAPE.vocab_size, (2, 128), generator=torch.Generator().manual_seed(1))
        imported = TransformerLM(SHAPE).eval()
        imported.load_state_dict(read_checkpoint(work / "imported.pt")["model"])
        with torch.no_grad():
            ours = model(ids)
            exported_diff = (hf_model(ids).logits - ours).abs().max().item()
            imported_diff = (imported(ids) - ours).abs().max().item()
        print(
            f"max |logit difference|: exported (transformers) {exported_diff:.2e}, imported {imported_diff:.2e}"
            f" (logits span {ours.min().item():.1f} .. {ours.max().item():.1f})"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
