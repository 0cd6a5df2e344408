"""The text part of `make demo`: the chatterbot-corpus dialogues (28 languages, installed from PyPI)
-> token shards -> a tiny Finch trained from scratch -> a reply to a greeting in each of 7 languages,
each checked to be in the greeting's script (Unicode script of the letters, `script_of`).

Writes under runs/demo/: corpus/ and text-data/ (kept between runs) and text/ (the run folder).
"""
import shutil
import time
import unicodedata
from collections import Counter
from pathlib import Path

RUNS = Path("runs/demo")
PROMPTS = [  # the chat format the corpus is written in
    "User: Hello, how are you?\n\nAssistant:",
    "User: Hola, ¿cómo estás?\n\nAssistant:",
    "User: Привет, как дела?\n\nAssistant:",
    "User: 你好吗？\n\nAssistant:",
    "User: नमस्ते, आप कैसे हैं?\n\nAssistant:",
    "User: こんにちは、元気ですか？\n\nAssistant:",
    "User: 안녕하세요\n\nAssistant:",
]


def script_of(text: str) -> str:
    """The writing system most of the letters of `text` are in ("Latin", "Cyrillic", "Han",
    "Devanagari", "Hangul", ...): the first word of each letter's Unicode name, "Han" for CJK
    ideographs. Any kana makes it "Japanese" (kana with Han), so Chinese is Han without kana.
    "none" for text without letters."""
    counts = Counter()
    for ch in text:
        if ch.isalpha():
            name = unicodedata.name(ch, "")
            counts["Han" if name.startswith("CJK") else name.split(" ", 1)[0].capitalize() or "unknown"] += 1
    if counts["Hiragana"] or counts["Katakana"]:
        return "Japanese"
    return counts.most_common(1)[0][0] if counts else "none"


def user_message(prompt: str) -> str:
    return prompt.removeprefix("User: ").split("\n\n", 1)[0]


def text_demo():
    from eaglefinch.rwkv_core.sampling import SamplerConfig

    from .corpus import write_default_corpus
    from .generate import generate_text
    from .prepare import prepare
    from .run import TextRun
    from .tokenizer import WorldTokenizer
    from .train import train_text

    corpus, data, run = RUNS / "corpus", RUNS / "text-data", RUNS / "text"
    if not corpus.exists():
        stats = write_default_corpus(corpus)
        print(f"corpus: {sum(s['docs'] for s in stats.values()):,} conversations in {len(stats)} languages")
    if not data.exists():
        prepare([corpus], data, WorldTokenizer(), val_fraction=0.05, metadata={"tokenizer": "rwkv_vocab_v20230424"})
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.time()
    loss = train_text("text-tiny", data, run)
    print(f"trained a tiny Finch in {time.time() - t0:.0f} s: final train loss {loss:.3f}; curve: {run / 'loss.png'}")
    model, tokenizer = TextRun.open(run).load()
    # a low temperature: a tiny model's replies wander off into other languages at 0.7
    replies, _ = generate_text(model, PROMPTS, 40, SamplerConfig(temperature=0.4, top_p=0.9),
                               tokenizer=tokenizer, stop=["\n\n"], seed=0)
    matches = 0
    for prompt, reply in zip(PROMPTS, replies):
        asked, answered = script_of(user_message(prompt)), script_of(reply)
        matches += asked == answered
        print("-" * 60)
        print(prompt + reply)
        print(f"[script: asked in {asked}, answered in {answered}: {'same' if asked == answered else 'different'}]")
    print("-" * 60)
    print(f"replies in the prompt's script: {matches} of {len(PROMPTS)}")
    return matches
