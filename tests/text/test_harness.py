"""text.harness: the `eaglefinch` model in EleutherAI's lm-evaluation-harness, on local tasks (a task
YAML over a JSONL file, nothing downloaded), checked against our model computed directly: each
log-likelihood as one unbatched forward from the initial state, each rolling log-likelihood as the
whole document's, each generation as a greedy loop by hand; the batched, shared-context path
against one request at a time; lm-eval's command line through `python -m eaglefinch.text.harness`."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# nothing here may reach the network (datasets reads this when it is imported)
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
pytest.importorskip("lm_eval", reason="lm-eval is not installed: pip install 'eaglefinch[lm-eval]'")

import lm_eval  # noqa: E402
import yaml  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from eaglefinch.rwkv_core import RWKV, save_model  # noqa: E402
from eaglefinch.rwkv_core.checkpoint import infer_config  # noqa: E402
from eaglefinch.text.harness import EagleFinchLM, sampler_for  # noqa: E402
from eaglefinch.text.run import TextRun  # noqa: E402
from eaglefinch.text.subset import SubsetTokenizer, ids_in  # noqa: E402
from eaglefinch.text.tokenizer import WorldTokenizer  # noqa: E402
from tests.core.official_ckpt import random_official_state_dict  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
GEN_TOKENS = 12

# multiple choice: shared contexts, a context ending in a space, one across lines, non-Latin text,
# and "Hel" + "lo", where the World tokenizer's "Hello" crosses the boundary (target_delimiter is "")
CHOICE_DOCS = [
    {"context": "The cat sat on the", "choices": [" mat", " moon", " dog that barked all night"], "label": 0},
    {"context": "Question: is water wet?\nAnswer: ", "choices": ["yes", "no"], "label": 0},
    {"context": "Hel", "choices": ["lo", "p", "icopter"], "label": 0},
    {"context": "Привет, как", "choices": [" дела?", " 世界"], "label": 1},
]
WORD_DOCS = [{"text": "One two three four"}, {"text": "The quick brown fox jumps over the lazy dog"}]
ROLLING_DOCS = [{"page": "A whole document, read at once.\nIts second line."}, {"page": "Short."},
                {"page": "Le texte d'un autre document, un peu plus long que le précédent."}]
GEN_DOCS = [{"context": "Once upon a time", "answer": ""}, {"context": "def main():\n", "answer": ""}]


def all_text():
    return [*(d["context"] + "".join(d["choices"]) for d in CHOICE_DOCS), *(d["text"] for d in WORD_DOCS),
            *(d["page"] for d in ROLLING_DOCS), *(d["context"] for d in GEN_DOCS)]


def random_model(arch, vocab_size):
    """A small model with random weights of official scale (far from uniform predictions)."""
    sd = random_official_state_dict(arch, n_layer=2, n_embd=32, vocab_size=vocab_size, head_size=16, mix_lora=8,
                                    decay_lora=8, decay="typical", seed=1)
    model = RWKV(infer_config(sd))
    model.load_state_dict(sd)
    return model.eval()


@pytest.fixture(scope="module")
def finch_run(tmp_path_factory):
    """A run folder of a tiny random Finch with a trimmed vocabulary (vocab_subset.json)."""
    folder, world = tmp_path_factory.mktemp("finch"), WorldTokenizer()
    tokenizer = SubsetTokenizer(world, ids_in([world.encode(t) for t in all_text()]))
    save_model(random_model("finch", tokenizer.vocab_size), folder / "model.safetensors")
    tokenizer.save(folder / "vocab_subset.json")
    return folder


@pytest.fixture(scope="module")
def eagle_file(tmp_path_factory):
    """A bare .safetensors of a tiny random Eagle with the full World vocabulary."""
    path = tmp_path_factory.mktemp("eagle") / "eagle.safetensors"
    save_model(random_model("eagle", WorldTokenizer.vocab_size), path)
    return path


@pytest.fixture(params=["finch_run", "eagle_file"])
def checkpoint(request):
    return request.getfixturevalue(request.param)


# -- the reference: our model, computed directly ------------------------------------------------------

def reference_pair(tokenizer, context, continuation):
    """lm-eval's split restated: trailing whitespace moves to the continuation; context + continuation
    is encoded whole and cut after the context's tokens, unless a token crosses the boundary (the
    context's tokens are then no prefix of the whole's): then both are encoded alone."""
    if context == "":
        return [0], tokenizer.encode(continuation)
    head = context.rstrip()
    continuation = context[len(head):] + continuation
    context_ids, whole = tokenizer.encode(head) or [0], tokenizer.encode(head + continuation)
    if whole[:len(context_ids)] == context_ids:
        return context_ids, whole[len(context_ids):]
    return context_ids, tokenizer.encode(continuation)


@torch.no_grad()
def direct_loglikelihood(model, context_ids, continuation_ids):
    """One forward of context + continuation from the initial state: (summed log-prob, greedy)."""
    logits, _ = model(torch.tensor([context_ids + continuation_ids]))
    logp = logits[0, len(context_ids) - 1:-1].float().log_softmax(-1)
    target = torch.tensor(continuation_ids)
    return logp.gather(1, target[:, None]).double().sum().item(), bool((logp.argmax(-1) == target).all())


@torch.no_grad()
def greedy_text(model, tokenizer, context, n_tokens):
    """Greedy generation by hand, token by token with the state: the argmax among the tokenizer's ids,
    ending at token 0 (end of text) or after n_tokens."""
    logits, state = model(torch.tensor([tokenizer.encode(context)]))
    out = []
    for _ in range(n_tokens):
        token = int(logits[0, -1, :tokenizer.id_limit].argmax())
        if token == 0:
            break
        out.append(token)
        logits, state = model(torch.tensor([[token]]), state)
    return tokenizer.decode(out)


@torch.no_grad()
def greedy_pair(model, tokenizer, contexts):
    """(context, continuation): the first context whose greedy next token, as text, tokenizes back to it."""
    for context in contexts:
        logits, _ = model(torch.tensor([tokenizer.encode(context)]))
        token = int(logits[0, -1, :tokenizer.id_limit].argmax())
        text = tokenizer.decode([token])
        if token and reference_pair(tokenizer, context, text)[1] == [token]:
            return context, text
    raise AssertionError("no context's greedy token survives tokenization: pick other contexts")


# -- the local tasks ------------------------------------------------------------------------------------

def write_task(folder, name, docs, **config):
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    config = {"task": name, "dataset_path": "json", "test_split": "test",
              "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(folder / "hf-cache")},
              **config}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")


def write_tasks(folder, until, choice_docs=CHOICE_DOCS):
    write_task(folder, "local_choice", choice_docs, output_type="multiple_choice", doc_to_text="{{context}}",
               doc_to_choice="{{choices}}", doc_to_target="{{label}}", target_delimiter="",
               metric_list=[{"metric": "acc"}])
    write_task(folder, "local_words", WORD_DOCS, output_type="loglikelihood",
               doc_to_text="{{text.split(' ')[:-1]|join(' ')}}", doc_to_target="{{' '+text.split(' ')[-1]}}",
               metric_list=[{"metric": "acc", "aggregation": "mean", "higher_is_better": True}])
    write_task(folder, "local_rolling", ROLLING_DOCS, output_type="loglikelihood_rolling", doc_to_text="",
               doc_to_target="{{page}}", metric_list=[{"metric": "word_perplexity"}, {"metric": "bits_per_byte"}])
    write_task(folder, "local_generate", GEN_DOCS, output_type="generate_until", doc_to_text="{{context}}",
               doc_to_target="{{answer}}", generation_kwargs={"until": until, "max_gen_toks": GEN_TOKENS,
                                                              "do_sample": False},
               metric_list=[{"metric": "exact_match"}])


def stop_string(text):
    """Two printable characters from the middle of `text`: a stop string that it does contain."""
    k = next(k for k in range(len(text) // 2, len(text) - 1) if text[k:k + 2].isprintable())
    return text[k:k + 2]


def test_lm_eval_receives_our_models_log_likelihoods_and_greedy_generations(checkpoint, tmp_path):
    model, tokenizer = TextRun.open(checkpoint).load()
    full = [greedy_text(model, tokenizer, d["context"], GEN_TOKENS) for d in GEN_DOCS]
    until = [stop_string(full[0]), "\n\n"]
    # one choice is the model's own greedy continuation: lm-eval must see it marked greedy
    context, continuation = greedy_pair(model, tokenizer, all_text())
    write_tasks(tmp_path, until, CHOICE_DOCS + [{"context": context, "choices": [continuation, " mat"], "label": 0}])

    out = lm_eval.simple_evaluate(
        model="eaglefinch", model_args={"checkpoint": str(checkpoint), "forward_tokens": 7}, batch_size=3,
        device="cpu", tasks=["local_choice", "local_words", "local_rolling", "local_generate"],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False), log_samples=True,
        bootstrap_iters=0, random_seed=None, numpy_random_seed=None, torch_random_seed=None)  # leave global RNGs alone
    samples = out["samples"]

    greedy_flags = []
    for task in ("local_choice", "local_words"):
        for sample in samples[task]:
            for (context, continuation), resp in zip(sample["arguments"], sample["resps"]):
                (logprob, greedy), = resp
                expected, expected_greedy = direct_loglikelihood(model, *reference_pair(tokenizer, context, continuation))
                assert logprob == pytest.approx(expected, abs=1e-4), (context, continuation)
                greedy_flags.append((greedy, expected_greedy))
    assert len(samples["local_choice"]) == len(CHOICE_DOCS) + 1
    assert [g for g, _ in greedy_flags] == [e for _, e in greedy_flags] and {e for _, e in greedy_flags} == {True, False}

    for sample, doc in zip(samples["local_rolling"], ROLLING_DOCS):
        ids = [0] + tokenizer.encode(doc["page"])
        expected, _ = direct_loglikelihood(model, ids[:1], ids[1:])
        assert sample["resps"][0][0] == pytest.approx(expected, abs=1e-4)

    for sample, text in zip(samples["local_generate"], full):
        cut = min((i for i in (text.find(s) for s in until) if i >= 0), default=len(text))
        assert sample["resps"][0][0] == text[:cut]
    assert len(samples["local_generate"][0]["resps"][0][0]) < len(full[0])   # it did stop at `until`
    assert set(out["results"]) == {"local_choice", "local_words", "local_rolling", "local_generate"}


def requests(kind, pairs):
    return [Instance(kind, {}, args, i) for i, args in enumerate(pairs)]


def test_batched_shared_contexts_equal_one_request_at_a_time(checkpoint):
    batched = EagleFinchLM(checkpoint=str(checkpoint), batch_size=4, forward_tokens=5, device="cpu")
    single = EagleFinchLM(checkpoint=str(checkpoint), batch_size=1, forward_tokens=10_000, device="cpu")
    pairs = [(d["context"], c) for d in CHOICE_DOCS for c in d["choices"]] + [("", "Hello there")]
    together = batched.loglikelihood(requests("loglikelihood", pairs), disable_tqdm=True)
    alone = [single.loglikelihood(requests("loglikelihood", [p]), disable_tqdm=True)[0] for p in pairs]
    assert [g for _, g in together] == [g for _, g in alone]
    assert [lp for lp, _ in together] == pytest.approx([lp for lp, _ in alone], abs=1e-5)

    docs = [(d["page"],) for d in ROLLING_DOCS]
    together = batched.loglikelihood_rolling(requests("loglikelihood_rolling", docs), disable_tqdm=True)
    alone = [single.loglikelihood_rolling(requests("loglikelihood_rolling", [d]), disable_tqdm=True)[0] for d in docs]
    assert together == pytest.approx(alone, abs=1e-5)


def test_tokenization_is_lm_evals_except_across_a_token_boundary(checkpoint):
    lm = EagleFinchLM(checkpoint=str(checkpoint), device="cpu")
    tok = lm.tokenizer
    lm_evals = super(EagleFinchLM, lm)._encode_pair
    for context, continuation in [("The cat sat on the", " mat"), ("Answer: ", "yes"), ("a\n\n", "b")]:
        assert lm._encode_pair(context, continuation) == lm_evals(context, continuation)
    assert lm._encode_pair("Answer: ", "yes")[1] == tok.encode(" yes")   # the space moved to the continuation
    # "Hello" is one World token: lm-eval's split would give "lo" no tokens at all
    assert lm_evals("Hel", "lo")[1] == [] and lm._encode_pair("Hel", "lo") == (tok.encode("Hel"), tok.encode("lo"))


def test_sampling_options_and_bad_arguments():
    assert sampler_for({"do_sample": False, "temperature": 0.0}).temperature == 0
    sampler = sampler_for({"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": None})
    assert (sampler.temperature, sampler.top_p, sampler.top_k) == (0.7, 0.9, 0)
    with pytest.raises(ValueError, match="num_beams"):
        sampler_for({"do_sample": False, "num_beams": 4})
    with pytest.raises(ValueError, match="batch_size auto"):
        EagleFinchLM(checkpoint="unused", batch_size="auto")
    with pytest.raises(ValueError, match="dtype 'int8'"):
        EagleFinchLM(checkpoint="unused", dtype="int8")


def test_without_lm_eval_the_import_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval.models", None)   # as if lm-eval were not installed
    monkeypatch.delitem(sys.modules, "eaglefinch.text.harness")
    with pytest.raises(ImportError, match=r"pip install 'eaglefinch\[lm-eval\]'"):
        import eaglefinch.text.harness  # noqa: F401


@pytest.mark.slow
def test_lm_evals_command_line_runs_the_model(finch_run, tmp_path):
    """`python -m eaglefinch.text.harness` is lm-eval's command line with the model registered (about
    10 s, most of it lm-eval indexing its own tasks)."""
    checkpoint = finch_run
    model, tokenizer = TextRun.open(checkpoint).load()
    write_tasks(tmp_path, ["\n"])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "eaglefinch.text.harness", "--model", "eaglefinch", "--model_args",
         f"checkpoint={checkpoint},forward_tokens=7", "--tasks", "local_words", "--include_path", str(tmp_path),
         "--batch_size", "2", "--device", "cpu", "--output_path", str(tmp_path / "out"), "--log_samples"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "local_words" in done.stdout   # the results table
    samples = [json.loads(line) for f in (tmp_path / "out").rglob("samples_local_words_*.jsonl")
               for line in f.read_text().splitlines()]
    assert len(samples) == len(WORD_DOCS)
    for sample in samples:   # written as {"gen_args_0": {"arg_0": context, "arg_1": continuation}}, strings
        args = sample["arguments"]["gen_args_0"]
        expected, _ = direct_loglikelihood(model, *reference_pair(tokenizer, args["arg_0"], args["arg_1"]))
        assert float(sample["resps"][0][0][0]) == pytest.approx(expected, abs=1e-4)
