"""lm-evaluation-harness itself, through its `local-completions` model, against `lmkit serve`: a multiple-choice
task defined in a local YAML and JSON Lines file (nothing downloaded) scores what `lmkit eval --choices` scores,
and the log-probabilities it read from the server equal the model's own."""

import json
import socket
from pathlib import Path

import datasets
import huggingface_hub
import lm_eval
import pytest
import torch
from helpers import SHAKESPEARE
from lm_eval.tasks import TaskManager
from serving import running_server

from lmkit.checkpoint import model_state, write_checkpoint
from lmkit.cli.app import app
from lmkit.generate import load_model_and_tokenizer
from lmkit.interop.hf import export_hf
from lmkit.model import ModelConfig, TransformerLM
from lmkit.tokenizer import Tokenizer, train_bpe

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

EOT = "<|endoftext|>"
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> tuple[Path, Path]:
    """(a run checkpoint of a random model with a small BPE tokenizer, its transformers export for lm-eval's
    tokenizer)."""
    folder = tmp_path_factory.mktemp("served")
    (folder / "corpus.txt").write_bytes(SHAKESPEARE.read_bytes()[:20_000])
    vocab, merges = train_bpe(folder / "corpus.txt", 320, [EOT], num_workers=1)
    tokenizer = Tokenizer(vocab, merges, [EOT])
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(vocab_size=320, context_length=96, d_model=32, num_layers=2, num_heads=4))
    checkpoint = folder / "best.pt"
    config = {"model": model.config.model_dump(mode="json")}
    write_checkpoint(model_state(model), None, 0, checkpoint, config=config, tokenizer_json=tokenizer.to_json())
    export_hf(checkpoint, folder / "hf")
    return checkpoint, folder / "hf"


def write_task(folder: Path, questions: Path) -> None:
    """The questions as an lm-eval task (its datasets cache in `folder`, not the user's). lmkit scores a choice
    after the tokenizer's first special token and the context, with the choice's text taken as written (it
    starts with its space): so the task's text starts with <|endoftext|> (the exported tokenizer reads it as
    that token) and the delimiter is empty. Both normalise by the choice's length in characters (acc_norm)."""
    (folder / "lmkit_choices.yaml").write_text(
        "task: lmkit_choices\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(questions))}\n"
        f"  cache_dir: {json.dumps(str(folder / 'datasets'))}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        f'doc_to_text: "{EOT}{{{{context}}}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{label}}"\n'
        'target_delimiter: ""\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def refuse_the_network(monkeypatch) -> list:
    """Refuse, as a machine without a network would, to look up or connect to any host but this one (the test
    server); return the list each refused host is added to (a caller may swallow the OSError)."""
    refused: list = []
    lookup, connect = socket.getaddrinfo, socket.socket.connect

    def check(host) -> None:
        if host not in LOOPBACK:
            refused.append(host)
            raise OSError(f"no network in this test: {host!r}")

    def guarded_lookup(host, *args, **kwargs):
        check(host)
        return lookup(host, *args, **kwargs)

    def guarded_connect(sock: socket.socket, address) -> None:
        if isinstance(address, tuple):
            check(address[0])
        return connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", guarded_lookup)
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    return refused


def direct_loglikelihood(model: TransformerLM, context: list[int], continuation: list[int]) -> float:
    """log p(continuation | context) from one forward pass of the model: no server, no lm-eval."""
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logprobs = model(ids)[0, :-1].double().log_softmax(-1)
    targets = torch.tensor(context + continuation)[1:]
    return float(logprobs.gather(-1, targets[:, None])[len(context) - 1 :].sum())


def test_lm_eval_scores_the_served_model_as_lmkit_eval_does(served, tmp_path, runner, monkeypatch) -> None:
    # HF_DATASETS_OFFLINE=1 and HF_HUB_OFFLINE=1 are read when datasets and huggingface_hub are imported, which
    # has happened: set what they set. Online, datasets would still ping S3 to count a load of the json builder;
    # connections past this machine are refused and counted, which proves nothing else goes out either.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    refused = refuse_the_network(monkeypatch)
    checkpoint, hf_folder = served
    questions = tmp_path / "questions.jsonl"
    questions.write_text((FIXTURES / "choices.jsonl").read_text())
    write_task(tmp_path, questions)
    model, tokenizer = load_model_and_tokenizer(checkpoint, "cpu")

    with running_server(model, tokenizer) as url:
        results = lm_eval.simple_evaluate(
            model="local-completions",
            model_args={
                "model": "tiny",
                "base_url": f"{url}/v1/completions",
                "tokenizer_backend": "huggingface",
                "tokenizer": str(hf_folder),
                "max_length": model.config.context_length,
                "num_concurrent": 1,
                "max_retries": 1,
            },
            tasks=["lmkit_choices"],
            task_manager=TaskManager(include_path=str(tmp_path)),
            batch_size=4,  # four (context, choice) rows a request: prompts as a list of token-id lists
            log_samples=True,
        )
    assert refused == [] and (tmp_path / "datasets").is_dir()
    ours = runner.invoke(app, ["eval", str(checkpoint), "--choices", str(questions), "--json", "--device", "cpu"])
    assert ours.exit_code == 0, ours.output
    report = json.loads(ours.stdout)["choices"]
    scores = results["results"]["lmkit_choices"]
    assert scores["acc,none"] == pytest.approx(report["accuracy"])
    assert scores["acc_norm,none"] == pytest.approx(report["accuracy_norm"])

    # Every log-likelihood lm-eval read from the server equals the model's own, to 1e-4.
    samples = results["samples"]["lmkit_choices"]
    assert len(samples) == report["questions"] == 6
    start = tokenizer.encode(EOT)
    for sample in samples:
        doc = sample["doc"]
        context = start + tokenizer.encode(doc["context"])
        for choice, response in zip(doc["choices"], sample["resps"], strict=True):
            expected = direct_loglikelihood(model, context, tokenizer.encode(choice))
            assert response[0][0] == pytest.approx(expected, abs=1e-4)


def test_the_export_reads_end_of_text_as_one_token(served) -> None:
    """What the task above relies on: the exported tokenizer turns the text <|endoftext|> into its id."""
    from transformers import AutoTokenizer

    checkpoint, hf_folder = served
    _, tokenizer = load_model_and_tokenizer(checkpoint, "cpu")
    exported = AutoTokenizer.from_pretrained(str(hf_folder))
    text = f"{EOT}The kettle"
    assert exported(text)["input_ids"] == tokenizer.encode(EOT) + tokenizer.encode("The kettle")
