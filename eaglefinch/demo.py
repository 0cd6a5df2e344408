"""`make demo`: the main job on the embedded default data, end to end on a CPU, in a few minutes.

Text: the chatterbot-corpus dialogues (28 languages, installed from PyPI) -> token shards ->
a tiny Finch trained from scratch -> replies generated in several languages and scripts.
Music: the Bach chorales of music21 -> MIDI event shards -> a tiny Finch -> a new piece
(runs/demo/music/sample.mid and its piano roll sample.png), see music/demo.py.
Visual: procedural shapes with exact captions -> a tiny CLIP -> a tiny VisualRWKV -> greedy
captions of held-out images, their exact-match accuracy and a grid (runs/demo/visual/captions.png),
see visual/demo.py.
Everything goes to runs/demo/; the loss curves are runs/demo/<name>/loss.png.
"""
import shutil
import sys
import time
from pathlib import Path

from eaglefinch.music.demo import music_demo
from eaglefinch.visual.demo import visual_demo

RUNS = Path("runs/demo")

TEXT_PROMPTS = [  # the chat format the corpus is written in
    "User: Hello, how are you?\n\nAssistant:",
    "User: Hola, ¿cómo estás?\n\nAssistant:",
    "User: Привет, как дела?\n\nAssistant:",
    "User: 你好吗？\n\nAssistant:",
    "User: नमस्ते, आप कैसे हैं?\n\nAssistant:",
    "User: こんにちは、元気ですか？\n\nAssistant:",
    "User: 안녕하세요\n\nAssistant:",
]


def text_demo():
    from eaglefinch.rwkv_core.sampling import SamplerConfig
    from eaglefinch.text.corpus import write_default_corpus
    from eaglefinch.text.generate import generate_text
    from eaglefinch.text.prepare import prepare
    from eaglefinch.text.tokenizer import WorldTokenizer
    from eaglefinch.text.run import TextRun
    from eaglefinch.text.train import train_text

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
    replies, _ = generate_text(model, TEXT_PROMPTS, 40, SamplerConfig(temperature=0.7, top_p=0.9),
                               tokenizer=tokenizer, stop=["\n\n"], seed=0)
    for prompt, reply in zip(TEXT_PROMPTS, replies):
        print("-" * 60)
        print(prompt + reply)


DEMOS = {"text": text_demo, "music": music_demo, "visual": visual_demo}


def main(argv=None):
    names = (argv if argv is not None else sys.argv[1:]) or list(DEMOS)
    for name in names:
        if name not in DEMOS:
            sys.exit(f"unknown demo {name!r}; choose from {', '.join(DEMOS)}")
        print(f"=== {name} demo ===")
        DEMOS[name]()


if __name__ == "__main__":
    main()
