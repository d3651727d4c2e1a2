"""Models in and out of other ecosystems: Hugging Face Llama folders (lmkit.interop.hf)."""
