"""`make demo`: the main job on the embedded default data, end to end on a CPU, in a few minutes.

Text: the chatterbot-corpus dialogues (28 languages, installed from PyPI) -> token shards ->
a tiny Finch trained from scratch -> replies in 7 languages, checked for the prompt's script, see
text/demo.py.
Music: the Bach chorales of music21 -> MIDI event shards -> a tiny Finch -> a new piece
(runs/demo/music/sample.mid and its piano roll sample.png), see music/demo.py.
Visual: procedural shapes with exact captions -> a tiny CLIP -> a tiny VisualRWKV -> greedy
captions of held-out images, their exact-match accuracy and a grid (runs/demo/visual/captions.png),
see visual/demo.py.
Everything goes to runs/demo/; the loss curves are runs/demo/<name>/loss.png.
"""
import sys
import time

from eaglefinch.music.demo import music_demo
from eaglefinch.text.demo import text_demo
from eaglefinch.visual.demo import visual_demo

DEMOS = {"text": text_demo, "music": music_demo, "visual": visual_demo}


def main(argv=None):
    names = (argv if argv is not None else sys.argv[1:]) or list(DEMOS)
    unknown = [name for name in names if name not in DEMOS]
    if unknown:
        sys.exit(f"unknown demo {unknown[0]!r}; choose from {', '.join(DEMOS)}")
    start = time.time()
    for name in names:
        print(f"=== {name} demo ===")
        t0 = time.time()
        DEMOS[name]()
        print(f"=== {name} demo: {minutes(time.time() - t0)} ===")
    print(f"all done in {minutes(time.time() - start)}")


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"


if __name__ == "__main__":
    main()
