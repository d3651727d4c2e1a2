"""Byte-level BPE: training (`train_bpe`), encoding and decoding (`Tokenizer`), and the file formats."""

from lmkit.tokenizer.tokenizer import Tokenizer as Tokenizer
from lmkit.tokenizer.train import train_bpe as train_bpe
