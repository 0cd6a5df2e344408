"""Speed of text.tokenizer.WorldTokenizer's encoders (ours in Python, and pyrwkv-tokenizer, the
compiled one it uses where installed) against the official rwkv package's TRIE_TOKENIZER.

    python bench/tokenizer.py [--kb 300] [--repeat 5] [--file some.txt]

Texts: "mixed" = sentences in 12 scripts/styles (prose, code, emoji) shuffled into one text;
"random" = random code points from the same scripts plus control characters and whitespace
runs (many rare characters, so short tokens: the hardest case for us); or your own --file.
Times are the best of --repeat runs, the tokenizers taking turns, so that a busy machine affects
them alike. All must give the same ids, or the script stops. Decoding is ours with either encoder.
"""
import argparse
import random
import sys
import time
from pathlib import Path

from eaglefinch.text.tokenizer import WorldTokenizer

SENTENCES = [
    "The quick brown fox jumps over the lazy dog. A recurrent network can be trained in parallel "
    "like a transformer, yet it runs with a fixed-size state at inference time.",
    "今天天气很好，我们一起去公园散步吧。循环神经网络可以像变换器一样并行训练，推理时只需要固定大小的状态。",
    "東京は日本の首都で、たくさんの人が毎朝電車で通勤しています。明日は雨が降るかもしれません。",
    "안녕하세요, 만나서 반갑습니다. 오늘은 날씨가 정말 좋네요. 같이 점심 먹을까요?",
    "Москва — столица России. Сегодня мы будем изучать рекуррентные нейронные сети и их обучение.",
    "مرحبا بكم في هذا الدرس. الشبكات العصبية المتكررة تعالج النصوص كلمة بعد كلمة.",
    "नमस्ते, आप कैसे हैं? आज हम भाषा मॉडल के बारे में बात करेंगे।",
    "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο.",
    "Great job! 🎉🚀 Let's celebrate with pizza 🍕 and music 🎶 😀👍",
    "def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(i * i)  # squares\n",
    "Total: 1,234.56 USD (2024-05-01) — 50% off!\tItem #42\r\n",
    "User: What is the capital of France?\n\nAssistant: The capital of France is Paris.\n\n",
]

RANGES = [(0x20, 0x7E), (0x4E00, 0x9FFF), (0x400, 0x4FF), (0x600, 0x6FF), (0x900, 0x97F),
          (0xAC00, 0xD7A3), (0x1F300, 0x1F64F), (0x00, 0x1F)]


def mixed_text(n_chars: int, rng: random.Random) -> str:
    parts, size = [], 0
    while size < n_chars:
        s = rng.choice(SENTENCES)
        parts.append(s + rng.choice([" ", "\n", "\n\n"]))
        size += len(parts[-1])
    return "".join(parts)


def random_text(n_chars: int, rng: random.Random) -> str:
    parts, size = [], 0
    while size < n_chars:
        lo, hi = rng.choice(RANGES)
        word = "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 8)))
        parts.append(word + rng.choice([" ", "\n", "  ", "\n\n", ", ", " the "]))
        size += len(parts[-1])
    return "".join(parts)


def best_times(fns, repeat):
    """Best wall time of each function, calling them in turn `repeat` times."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kb", type=int, default=300, help="size of each generated text in kB of characters")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--file", help="also time this UTF-8 text file")
    args = ap.parse_args()
    try:
        from rwkv.rwkv_tokenizer import TRIE_TOKENIZER
        import rwkv
    except ImportError:
        sys.exit("needs the official package: pip install rwkv==0.8.32")

    t = time.perf_counter()
    ours = WorldTokenizer(backend="python")
    t_init = time.perf_counter() - t
    ours.encode("x")  # the regex is compiled on first use
    t_regex = time.perf_counter() - t - t_init
    t = time.perf_counter()
    fast = WorldTokenizer(backend="pyrwkv")
    fast.encode("x")  # pyrwkv-tokenizer reads the vocabulary on first use
    t_fast = time.perf_counter() - t
    t = time.perf_counter()
    official = TRIE_TOKENIZER(str(Path(rwkv.__file__).parent / "rwkv_vocab_v20230424.txt"))
    t_official = time.perf_counter() - t
    print(f"construction: ours {t_init:.2f} s + {t_regex:.2f} s (regex, on first encode); "
          f"pyrwkv {t_fast:.2f} s (it reads the vocabulary on first encode); official {t_official:.2f} s")

    rng = random.Random(0)
    texts = {"mixed": mixed_text(args.kb * 1000, rng), "random": random_text(args.kb * 1000, rng)}
    if args.file:
        texts[Path(args.file).name] = Path(args.file).read_text(encoding="utf-8")
    print(f"{'':>27}|{'encode (MB/s of UTF-8)':^43}|{'decode (tokens/s)':^36}")
    print(f"{'text':>8} {'chars':>8} {'tokens':>8} |{'ours':>9} {'pyrwkv':>9} {'official':>9} {'pyrwkv/ours':>12} |"
          f"{'ours':>13} {'official':>14} {'ratio':>6} |")
    for name, text in texts.items():
        ids = ours.encode(text)
        if ids != official.encode(text) or ids != fast.encode(text):
            sys.exit(f"{name}: ids differ between the tokenizers")
        if ours.decode(ids) != text:
            sys.exit(f"{name}: decode(encode(text)) != text")
        mb = len(text.encode("utf-8")) / 1e6
        enc_ours, enc_fast, enc_off = best_times(
            [lambda: ours.encode(text), lambda: fast.encode(text), lambda: official.encode(text)], args.repeat)
        dec_ours, dec_off = best_times([lambda: ours.decode(ids), lambda: official.decode(ids)], args.repeat)
        print(f"{name:>8} {len(text):>8} {len(ids):>8} |"
              f"{mb / enc_ours:>9.2f} {mb / enc_fast:>9.2f} {mb / enc_off:>9.2f} {enc_ours / enc_fast:>11.1f}x |"
              f"{len(ids) / dec_ours:>13,.0f} {len(ids) / dec_off:>14,.0f} {dec_off / dec_ours:>5.1f}x |")

if __name__ == "__main__":
    main()
