"""Byte-level BPE: training (`train_bpe`), encoding and decoding (`Tokenizer`), and the file formats."""
