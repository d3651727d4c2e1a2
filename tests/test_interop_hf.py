"""`lmkit export hf` / `lmkit import hf`: transformers (the oracle) computes the same logits, greedy tokens and
token ids; imports round-trip; every bad input is one line, exit 2, nothing written."""

import json
import os
from pathlib import Path

import pytest
import tokenizers
import torch
from helpers import SHAKESPEARE, assert_input_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

import lmkit.interop.hf as hf
import lmkit.interop.hf.tensors as hf_tensors
from lmkit.checkpoint import model_state, read_checkpoint, write_checkpoint
from lmkit.cli.app import app
from lmkit.generate import load_model_and_tokenizer
from lmkit.model import ModelConfig, TransformerLM
from lmkit.tokenizer import Tokenizer, train_bpe
from lmkit.tokenizer.formats import Layout

pytestmark = pytest.mark.usefixtures("one_thread")

EOT = "<|endoftext|>"
SHAPE = dict(vocab_size=320, context_length=64, d_model=32, num_layers=2, num_heads=4)
CASES = {
    "default": {},
    "tied": {"tie_embeddings": True},
    "gqa": {"d_model": 64, "num_heads": 8, "num_kv_heads": 2},
    "rope_theta": {"rope_theta": 500.0, "norm_eps": 1e-6},
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    """A BPE tokenizer trained on some Shakespeare: <|endoftext|> (id 0), 256 bytes, 63 merges."""
    corpus = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    corpus.write_bytes(SHAKESPEARE.read_bytes()[:20_000])
    vocab, merges = train_bpe(corpus, 320, [EOT], num_workers=1)
    return Tokenizer(vocab, merges, [EOT])


def random_model(config: ModelConfig, seed: int = 0) -> TransformerLM:
    """A model with random weights, norm gains included (ones would hide a misplaced norm)."""
    torch.manual_seed(seed)
    model = TransformerLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("ln1.weight", "ln2.weight", "ln_final.weight")):
                param.uniform_(0.5, 1.5)
    return model.eval()


def save_lmkit(model: TransformerLM, tokenizer: Tokenizer, path: Path) -> Path:
    """The model as a checkpoint `lmkit generate` and export read (no optimizer, step 7)."""
    config = {"model": model.config.model_dump(mode="json")}
    write_checkpoint(
        model_state(model), None, 7, path, tokens_seen=0, config=config, tokenizer_json=tokenizer.to_json()
    )
    return path


def invoke(runner, *args):
    return runner.invoke(app, [str(a) for a in args])


def export(runner, ckpt: Path, out: Path, *options) -> Path:
    result = invoke(runner, "export", "hf", ckpt, "--out", out, *options)
    assert result.exit_code == 0, result.output
    return out


def load_hf(folder: Path) -> LlamaForCausalLM:
    """The folder loaded by transformers, checking it needed no missing or unexpected keys."""
    model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert type(model) is LlamaForCausalLM
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def hf_rope_theta(config) -> float:
    """rope theta as the installed transformers reads it (5.x: rope_parameters; 4.x: rope_theta)."""
    params = getattr(config, "rope_parameters", None)
    return params["rope_theta"] if params else config.rope_theta


def random_ids(vocab_size: int, shape=(2, 48), seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab_size, shape, generator=torch.Generator().manual_seed(seed))


# --- lmkit -> HF ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_exported_model_computes_the_same_logits(runner, tokenizer, tmp_path, case):
    config = ModelConfig(**{**SHAPE, **CASES[case]})
    model = random_model(config)
    folder = export(runner, save_lmkit(model, tokenizer, tmp_path / "ckpt.pt"), tmp_path / "hf")
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    hf_model = load_hf(folder)
    loaded = hf_model.config
    assert hf_rope_theta(loaded) == config.rope_theta and loaded.rms_norm_eps == config.norm_eps
    assert loaded.num_key_value_heads == config.num_kv_heads and loaded.max_position_embeddings == 64
    assert loaded.tie_word_embeddings == config.tie_embeddings
    if config.tie_embeddings:
        assert "lm_head.weight" not in load_file(folder / "model.safetensors")
        assert hf_model.lm_head.weight.data_ptr() == hf_model.model.embed_tokens.weight.data_ptr()
    ids = random_ids(config.vocab_size)
    with torch.no_grad():
        expected, actual = model(ids), hf_model(ids).logits
    assert expected.abs().max() > 0.1  # logits that are not all near zero, so 1e-4 means something
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)


def test_skipping_the_rotary_permutation_breaks_the_logits(runner, tokenizer, tmp_path, monkeypatch):
    """The mutation check: without the q/k reordering the exported model computes another function."""
    model = random_model(ModelConfig(**SHAPE))
    ckpt = save_lmkit(model, tokenizer, tmp_path / "ckpt.pt")
    monkeypatch.setattr(hf_tensors, "interleaved_to_halves", lambda weight, heads: weight)
    hf_model = load_hf(export(runner, ckpt, tmp_path / "hf"))
    ids = random_ids(SHAPE["vocab_size"])
    with torch.no_grad():
        difference = (hf_model(ids).logits - model(ids)).abs().max()
    assert difference > 1e-2


def test_greedy_generation_gives_the_same_tokens(runner, tokenizer, tmp_path):
    config = ModelConfig(**{**SHAPE, "num_kv_heads": 2})
    ckpt = save_lmkit(random_model(config, seed=3), tokenizer, tmp_path / "ckpt.pt")
    folder = export(runner, ckpt, tmp_path / "hf")
    result = invoke(runner, "generate", ckpt, "--prompt", "ROMEO: the king", "-t", "0", "-n", "32", "--json")
    assert result.exit_code == 0, result.output
    [ours] = json.loads(result.stdout)["generations"]
    prompt = torch.tensor([tokenizer.encode("ROMEO: the king")])
    theirs = load_hf(folder).generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=32, do_sample=False
    )
    assert theirs[0, prompt.shape[1] :].tolist() == ours["ids"]
    assert len(ours["ids"]) == 32 and len(set(ours["ids"])) > 8, ours["ids"]  # a long, varied run to agree on


def test_sharded_bfloat16_export(runner, tokenizer, tmp_path):
    config = ModelConfig(**SHAPE)
    model = random_model(config)
    folder = export(runner, save_lmkit(model, tokenizer, tmp_path / "ckpt.pt"), tmp_path / "hf", "--dtype", "bfloat16")
    assert json.loads((folder / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert all(t.dtype == torch.bfloat16 for t in load_file(folder / "model.safetensors").values())
    sharded = tmp_path / "sharded"
    facts = hf.export_hf(tmp_path / "ckpt.pt", sharded, max_shard_bytes=30_000)
    index = json.loads((sharded / hf.INDEX_FILE).read_text())
    assert len(facts["weight_files"]) > 2 and not (sharded / hf.WEIGHTS_FILE).exists()
    assert set(index["weight_map"].values()) == set(facts["weight_files"]) - {hf.INDEX_FILE}
    for written in [*folder.iterdir(), *sharded.iterdir()]:  # the safetensors writer alone would make 0600
        assert written.stat().st_mode & 0o777 == 0o666 & ~current_umask(), written.name
    ids = random_ids(config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(load_hf(sharded)(ids).logits, model(ids), atol=1e-4, rtol=0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.one_of(st.text(max_size=30), st.just(EOT)), max_size=6))
def test_autotokenizer_gives_lmkit_ids(hf_tokenizer, tokenizer, pieces):
    text = "".join(pieces)
    assert hf_tokenizer(text)["input_ids"] == tokenizer.encode(text)


@pytest.fixture(scope="module")
def hf_tokenizer(tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    model = random_model(ModelConfig(**SHAPE))
    hf.export_hf(save_lmkit(model, tokenizer, folder / "ckpt.pt"), folder / "hf")
    loaded = AutoTokenizer.from_pretrained(folder / "hf")
    assert loaded.eos_token == EOT and loaded.eos_token_id == tokenizer.special_ids[EOT]
    assert loaded.bos_token is None
    return loaded


# --- HF -> lmkit ---------------------------------------------------------------------------------------------


def random_llama(tied: bool, seed: int = 0) -> LlamaForCausalLM:
    """A random transformers Llama with grouped-query attention (8 query heads, 2 key/value heads)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tied,
        bos_token_id=None,
        eos_token_id=0,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            (param.uniform_(0.5, 1.5) if name.endswith("norm.weight") else param.normal_(0, 0.2))
    return model.eval()


def save_llama(model: LlamaForCausalLM, tokenizer: Tokenizer, folder: Path, **options) -> Path:
    model.save_pretrained(folder, **options)
    tokenizer.save(folder / "tokenizer.json")
    return folder


@pytest.mark.parametrize("tied", [False, True])
def test_imported_llama_computes_the_same_logits_and_exports_back_identically(runner, tokenizer, tmp_path, tied):
    llama = random_llama(tied)
    src = save_llama(llama, tokenizer, tmp_path / "src")
    result = invoke(runner, "import", "hf", src, "--out", tmp_path / "imported.pt")
    assert result.exit_code == 0, result.output
    model, tok = load_model_and_tokenizer(tmp_path / "imported.pt", device="cpu")
    assert model.config.num_kv_heads == 2 and model.config.tie_embeddings == tied
    assert tok.encode("To be, or not" + EOT) == tokenizer.encode("To be, or not" + EOT)
    ids = random_ids(320)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), llama(ids).logits, atol=1e-4, rtol=0)
    back = export(runner, tmp_path / "imported.pt", tmp_path / "back")
    original, exported = load_file(src / "model.safetensors"), load_file(back / "model.safetensors")
    assert original.keys() == exported.keys()
    assert all(torch.equal(original[name], exported[name]) for name in original)


def test_import_reads_shards_and_the_checkpoint_serves_lmkit_commands(runner, tokenizer, tmp_path):
    llama = random_llama(tied=False, seed=5)
    src = save_llama(llama, tokenizer, tmp_path / "src", max_shard_size="60KB")
    assert (src / hf.INDEX_FILE).is_file()
    ckpt = tmp_path / "imported.pt"
    assert invoke(runner, "import", "hf", src, "--out", ckpt, "--context-length", 32).exit_code == 0
    model, _ = load_model_and_tokenizer(ckpt, device="cpu")
    ids = random_ids(320, shape=(1, 32))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), llama(ids).logits, atol=1e-4, rtol=0)
    info = invoke(runner, "ckpt", "info", ckpt, "--json")
    assert info.exit_code == 0, info.output
    facts = json.loads(info.stdout)
    assert facts["model.num_kv_heads"] == 2 and facts["model.context_length"] == 32 and facts["step"] == 0
    assert facts["tokenizer.special_tokens"] == EOT and facts["imported_from"] == str(src)
    sampled = invoke(runner, "generate", ckpt, "--prompt", "KING:", "-t", "0", "-n", "8", "--json")
    assert sampled.exit_code == 0, sampled.output
    assert json.loads(sampled.stdout)["generations"][0]["ids"]


def test_fine_tuning_starts_from_the_imported_weights(runner, tokenizer, tmp_path):
    import numpy as np

    src = save_llama(random_llama(tied=True, seed=2), tokenizer, tmp_path / "src")
    ckpt = tmp_path / "imported.pt"
    assert invoke(runner, "import", "hf", src, "--out", ckpt).exit_code == 0
    tokenizer.save(tmp_path / "tokenizer.json")
    ids = np.array(tokenizer.encode(SHAKESPEARE.read_text()[:5000]), dtype=np.uint16)
    np.save(tmp_path / "train.npy", ids)
    np.save(tmp_path / "val.npy", ids)
    model_table = read_checkpoint(ckpt)["config"]["model"]
    (tmp_path / "run.toml").write_text(
        f'[data]\ntrain = "{tmp_path / "train.npy"}"\nval = "{tmp_path / "val.npy"}"\n'
        f'tokenizer = "{tmp_path / "tokenizer.json"}"\n'
        "[model]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in model_table.items()) + "[optim]\nlr = 1e-9\n"
        f'[train]\nbatch_size = 2\nsteps = 1\neval_batches = 1\ndevice = "cpu"\nout_dir = "{tmp_path / "out"}"\n'
        f'init_from = "{ckpt}"\n'
    )
    result = invoke(runner, "train", "--quiet", "--config", tmp_path / "run.toml")
    assert result.exit_code == 0, result.output
    tuned, start = read_checkpoint(tmp_path / "out" / "last.pt")["model"], read_checkpoint(ckpt)["model"]
    assert all(torch.allclose(tuned[name], start[name], atol=1e-6) for name in start)
    # --resume of weights without run state is the same fresh start
    assert_input_error(invoke(runner, "train", "--resume", ckpt), "give --config run.toml")
    out2 = f'train.out_dir="{tmp_path / "out2"}"'
    resumed = invoke(runner, "train", "--quiet", "--resume", ckpt, "--config", tmp_path / "run.toml", "--set", out2)
    assert resumed.exit_code == 0, resumed.output
    again = read_checkpoint(tmp_path / "out2" / "last.pt")["model"]
    assert all(torch.equal(again[name], tuned[name]) for name in tuned)
    # a wrong shape is refused before training
    (tmp_path / "run.toml").write_text((tmp_path / "run.toml").read_text().replace("num_layers = 2", "num_layers = 1"))
    wrong = invoke(
        runner, "train", "--quiet", "--config", tmp_path / "run.toml", "--set", f'train.out_dir="{tmp_path}/o3"'
    )
    assert_input_error(wrong, "model.num_layers = 2, the config says 1")


# --- bad input -------------------------------------------------------------------------------------------------


def folder_snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"norm": "post"}, "norm = 'post'"),
        ({"norm": "none"}, "norm = 'none'"),
        ({"position": "none"}, "position = 'none'"),
        ({"ffn": "silu"}, "ffn = 'silu'"),
        ({"qk_norm": True}, "qk_norm = True"),
    ],
)
def test_export_refuses_what_hf_llama_cannot_express(runner, tokenizer, tmp_path, setting, message):
    ckpt = save_lmkit(random_model(ModelConfig(**{**SHAPE, **setting})), tokenizer, tmp_path / "ckpt.pt")
    before = folder_snapshot(tmp_path)
    assert_input_error(invoke(runner, "export", "hf", ckpt, "--out", tmp_path / "hf"), message)
    assert folder_snapshot(tmp_path) == before and not (tmp_path / "hf").exists()


def test_export_output_folder_must_be_new_or_empty_unless_forced(runner, tokenizer, tmp_path):
    ckpt = save_lmkit(random_model(ModelConfig(**SHAPE)), tokenizer, tmp_path / "ckpt.pt")
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "model-00001-of-00002.safetensors").write_bytes(b"stale")
    assert_input_error(invoke(runner, "export", "hf", ckpt, "--out", out), "exists and is not empty")
    assert sorted(p.name for p in out.iterdir()) == ["model-00001-of-00002.safetensors", "notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "hf"]  # no staging folder left
    export(runner, ckpt, out, "--force")
    assert (out / "notes.txt").read_text() == "mine" and not (out / "model-00001-of-00002.safetensors").exists()
    load_hf(out)
    empty = tmp_path / "empty"
    empty.mkdir()
    export(runner, ckpt, empty)
    assert (empty / "model.safetensors").is_file()
    assert empty.stat().st_mode & 0o777 == 0o777 & ~current_umask()  # not mkdtemp's private 0700


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_export_bad_checkpoint_and_options(runner, tokenizer, tmp_path):
    ckpt = save_lmkit(random_model(ModelConfig(**SHAPE)), tokenizer, tmp_path / "ckpt.pt")
    assert_input_error(invoke(runner, "export", "hf", tmp_path / "nope.pt", "--out", tmp_path / "a"), "does not exist")
    assert_input_error(invoke(runner, "export", "hf", ckpt, "--out", tmp_path / "b", "--dtype", "int8"), "int8")
    assert_input_error(invoke(runner, "export", "hf", ckpt, "--out", tmp_path / "no" / "c"), "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


@pytest.fixture
def llama_folder(tokenizer, tmp_path) -> Path:
    return save_llama(random_llama(tied=False, seed=4), tokenizer, tmp_path / "src")


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def eos_appended(path: Path) -> None:
    """A post-processor that puts the end-of-text token after every text: lmkit's encode never would."""
    hf_tok = tokenizers.Tokenizer.from_file(str(path))
    hf_tok.post_processor = tokenizers.processors.TemplateProcessing(
        single=f"$A {EOT}", special_tokens=[(EOT, hf_tok.token_to_id(EOT))]
    )
    hf_tok.save(str(path))


def edit_weights(path: Path, edit) -> None:
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda src: edit_json(src / "config.json", model_type="gpt2", architectures=["GPT2LMHeadModel"]), "'gpt2'"),
        (lambda src: edit_json(src / "config.json", attention_bias=True), "attention_bias = True"),
        (lambda src: edit_json(src / "config.json", rope_parameters={"rope_type": "llama3"}), "'llama3'"),
        (lambda src: (src / "config.json").unlink(), "has no config.json"),
        (
            lambda src: edit_weights(src / "model.safetensors", lambda t: t.pop("model.layers.1.mlp.up_proj.weight")),
            "missing the tensor model.layers.1.mlp.up_proj.weight",
        ),
        (
            lambda src: edit_weights(
                src / "model.safetensors",
                lambda t: t.update({"model.layers.0.self_attn.k_proj.weight": torch.zeros(64, 64)}),
            ),
            "model.layers.0.self_attn.k_proj.weight is (64, 64)",
        ),
        (
            lambda src: edit_weights(
                src / "model.safetensors", lambda t: t.update({"model.extra.weight": torch.zeros(2)})
            ),
            "holds model.extra.weight",
        ),
        (lambda src: (src / "model.safetensors").write_bytes(b"not safetensors"), "not a readable safetensors"),
        (lambda src: (src / "model.safetensors").unlink(), "has no model.safetensors"),
        (lambda src: (src / "tokenizer.json").unlink(), "has no tokenizer.json"),
        (
            lambda src: edit_json(src / "tokenizer.json", normalizer={"type": "NFC"}),
            "the normalizer 'NFC' is not supported",
        ),
        (lambda src: eos_appended(src / "tokenizer.json"), "a post_processor adding ['<|endoftext|>'] after the text"),
    ],
    ids=[
        "not-llama",
        "bias",
        "rope-scaling",
        "no-config",
        "missing-tensor",
        "shape",
        "unexpected-tensor",
        "corrupt",
        "no-weights",
        "no-tokenizer",
        "tokenizer",
        "tokenizer-appends-eos",
    ],
)
def test_import_refuses_bad_folders(runner, llama_folder, tmp_path, damage, message):
    damage(llama_folder)
    out = tmp_path / "out.pt"
    assert_input_error(invoke(runner, "import", "hf", llama_folder, "--out", out), message)
    assert not out.exists() and not list(tmp_path.glob(".out.pt*"))


@pytest.mark.parametrize(
    ("edits", "message"),
    [
        # transformers 5 writes rope_parameters; Llama 3.1 configs also carry rope_scaling: both are read.
        (
            {
                "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
                "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192},
            },
            "rope_scaling asks for RoPE scaling 'llama3'",
        ),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling asks for RoPE scaling 'linear'"),
        (
            {"rope_theta": 500000.0, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}},
            "states rope_theta twice with different values (rope_theta = 500000, rope_parameters.rope_theta = 10000)",
        ),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor is not 1"),
        ({"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.25}}, "partial_rotary_factor is not"),
        ({"rope_theta": "10000"}, "rope_theta is not a number"),
    ],
    ids=["llama31-both-layouts", "linear", "theta-disagrees", "partial-top", "partial-nested", "theta-type"],
)
def test_import_reads_every_place_rope_is_stated(runner, llama_folder, tmp_path, edits, message):
    edit_json(llama_folder / "config.json", **edits)
    out = tmp_path / "out.pt"
    assert_input_error(invoke(runner, "import", "hf", llama_folder, "--out", out), message)
    assert not out.exists()


def test_import_takes_rope_theta_stated_the_same_in_both_layouts(runner, llama_folder, tmp_path):
    edit_json(
        llama_folder / "config.json",
        rope_theta=250000.0,
        rope_parameters={"rope_type": "default", "rope_theta": 250000},
        rope_scaling=None,
    )
    out = tmp_path / "out.pt"
    assert invoke(runner, "import", "hf", llama_folder, "--out", out).exit_code == 0
    assert read_checkpoint(out)["config"]["model"]["rope_theta"] == 250000.0


def test_import_refuses_missing_folders_hub_ids_and_existing_outputs(runner, llama_folder, tmp_path, monkeypatch):
    out = tmp_path / "out.pt"
    assert_input_error(invoke(runner, "import", "hf", tmp_path / "absent", "--out", out), "does not exist")
    monkeypatch.chdir(tmp_path)
    assert_input_error(invoke(runner, "import", "hf", "meta-llama/Llama-3.2-1B", "--out", out), "download")
    out.write_bytes(b"keep")
    assert_input_error(invoke(runner, "import", "hf", llama_folder, "--out", out), "pass --force")
    assert out.read_bytes() == b"keep"
    assert invoke(runner, "import", "hf", llama_folder, "--out", out, "--force").exit_code == 0
    assert read_checkpoint(out)["config"]["model"]["num_kv_heads"] == 2


BOS = "<|begin_of_text|>"


@pytest.fixture(scope="module")
def llama3_tokenizer(tmp_path_factory) -> Tokenizer:
    """A tokenizer laid out as Llama 3's: its pattern, ignore_merges and a BOS the post-processor adds."""
    corpus = tmp_path_factory.mktemp("corpus3") / "corpus.txt"
    corpus.write_bytes(SHAKESPEARE.read_bytes()[:20_000] + b" 2024 12345 DON'T\r\n")
    vocab, merges = train_bpe(corpus, 319, [EOT, BOS], num_workers=1, pattern="llama3")
    return Tokenizer(vocab, merges, [EOT, BOS], Layout("llama3", ignore_merges=True, bos_token=BOS))


LLAMA3_TEXTS = ["In 2024, the 12345 cats DON'T sleep.\r\nHello  world\n", "To be, or not", "", "x" + EOT + "y"]


def test_a_llama3_style_folder_imports_with_its_ids_and_logits(runner, llama3_tokenizer, tmp_path):
    llama = random_llama(tied=False, seed=6)
    src = save_llama(llama, llama3_tokenizer, tmp_path / "src")
    auto = AutoTokenizer.from_pretrained(src)
    result = invoke(runner, "import", "hf", src, "--out", tmp_path / "imported.pt", "--json")
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["tokenizer pattern"] == "llama3" and facts["bos token"] == BOS
    model, tok = load_model_and_tokenizer(tmp_path / "imported.pt", device="cpu")
    for text in LLAMA3_TEXTS:
        assert tok.encode(text) == auto(text, add_special_tokens=False)["input_ids"]
        assert auto(text)["input_ids"] == [tok.special_ids[BOS], *tok.encode(text)]
    ids = random_ids(320)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), llama(ids).logits, atol=1e-4, rtol=0)


def test_a_folder_that_transformers_re_saved_imports(runner, tokenizer, tmp_path):
    model = random_model(ModelConfig(**SHAPE))
    exported = export(runner, save_lmkit(model, tokenizer, tmp_path / "ckpt.pt"), tmp_path / "hf")
    resaved = tmp_path / "resaved"
    AutoTokenizer.from_pretrained(exported).save_pretrained(resaved)
    AutoModelForCausalLM.from_pretrained(exported).save_pretrained(resaved)
    assert json.loads((resaved / "tokenizer.json").read_text())["post_processor"] is not None
    result = invoke(runner, "import", "hf", resaved, "--out", tmp_path / "back.pt")
    assert result.exit_code == 0, result.output
    _, tok = load_model_and_tokenizer(tmp_path / "back.pt", device="cpu")
    assert tok.encode("To be, or not" + EOT) == tokenizer.encode("To be, or not" + EOT)


def test_a_folder_without_a_tokenizer_takes_one_from_the_option(runner, llama_folder, tokenizer, tmp_path):
    (llama_folder / "tokenizer.json").unlink()
    tokenizer.save(tmp_path / "elsewhere.json")
    out = tmp_path / "out.pt"
    result = invoke(runner, "import", "hf", llama_folder, "--out", out, "--tokenizer", tmp_path / "elsewhere.json")
    assert result.exit_code == 0, result.output
    assert load_model_and_tokenizer(out, device="cpu")[1].encode("To be") == tokenizer.encode("To be")
