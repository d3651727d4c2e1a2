"""Hugging Face Llama folders: export an lmkit checkpoint as a `LlamaForCausalLM`, and import one back.

    from lmkit.interop.hf import export_hf, import_hf
    export_hf("runs/tinystories/best.pt", "tinystories-hf")          # transformers loads the folder
    import_hf("tinystories-hf", "back.pt")                           # lmkit generate / train.init_from read it

The names map one to one; the one change to the numbers is the order of the q_proj and k_proj rows
(lmkit.interop.hf.tensors). config.json and the tokenizer files (lmkit.interop.hf.config) are plain JSON and
the weights safetensors (lmkit.interop.hf.folder): nothing here imports transformers.
"""

from lmkit.interop.hf.folder import INDEX_FILE, WEIGHTS_FILE, export_hf, import_hf

__all__ = ["export_hf", "import_hf", "INDEX_FILE", "WEIGHTS_FILE"]
