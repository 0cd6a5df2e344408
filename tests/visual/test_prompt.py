import math

import pytest
import torch

from eaglefinch.visual.prompt import (
    build_layout,
    collate,
    encode_conversation,
    per_sample_loss,
    place_image,
    splice_image_tokens,
)


def encode(text):  # a character tokenizer keeps every expected sequence readable
    return [ord(c) for c in text]


def decode(ids):
    return "".join(chr(i) for i in ids)


FILL = 1  # a fill id no character above produces


def test_build_layout_inserts_image_tokens_at_the_placeholder():
    layout = build_layout([10, 11, 12, 13, 14], [0, 0, 0, 1, 1], image_at=2, n_image_tokens=3, fill_id=FILL)
    assert layout.ids == [10, 11, FILL, FILL, FILL, 12, 13, 14]
    assert layout.image_span == (2, 5)
    assert layout.loss_mask == [0, 0, 0, 0, 0, 0, 1, 1]


def test_build_layout_without_image_and_bad_arguments():
    layout = build_layout([5, 6], [0, 1], image_at=None, n_image_tokens=4)
    assert layout.ids == [5, 6] and layout.image_span == (0, 0) and layout.loss_mask == [0, 1]
    with pytest.raises(ValueError, match="outside"):
        build_layout([5, 6], [0, 1], image_at=3, n_image_tokens=4)
    with pytest.raises(ValueError, match="differ in length"):
        build_layout([5, 6], [0], image_at=0, n_image_tokens=4)


def split_layout(layout):
    start, end = layout.image_span
    before, after = decode(layout.ids[:start]), decode(layout.ids[end:])
    answer = decode(i for i, m in zip(layout.ids, layout.loss_mask) if m)
    return before, layout.ids[start:end], after, answer


def test_inline_conversation_layout_and_answer_mask():
    layout = encode_conversation([("<image>\nWhat colour?", "red")], encode, n_image_tokens=4, fill_id=FILL)
    before, image, after, answer = split_layout(layout)
    assert before == "User: "
    assert image == [FILL] * 4
    assert after == "\nWhat colour?\n\nAssistant: red\n\n"
    assert answer == " red\n\n"  # the answer and its stop token, nothing else
    # the mask covers exactly the trailing answer tokens
    assert layout.loss_mask == [0] * (len(layout.ids) - len(" red\n\n")) + [1] * len(" red\n\n")


def test_sandwich_puts_the_instruction_on_both_sides_of_the_image():
    layout = encode_conversation([("What colour?\n<image>", "red")], encode, 2, "sandwich", fill_id=FILL)
    before, image, after, answer = split_layout(layout)
    assert before == "User: What colour?\n"
    assert after == "\nWhat colour?\n\nAssistant: red\n\n"
    assert len(image) == 2 and answer == " red\n\n"
    assert place_image("<image>\nQ?", "first") == "<image>\nQ?"
    assert place_image("Q?\n<image>", "first") == "<image>\nQ?"
    assert place_image("<image> Q?", "sandwich") == "Q?\n<image>\nQ?"


def test_multi_turn_supervises_every_answer_and_collapses_blank_lines():
    turns = [("<image>\nA?", "one\n\n\ntwo"), ("B?", "three")]
    layout = encode_conversation(turns, encode, 3, fill_id=FILL)
    _, _, after, answer = split_layout(layout)
    assert after == "\nA?\n\nAssistant: one\ntwo\n\nUser: B?\n\nAssistant: three\n\n"
    assert answer == " one\ntwo\n\n three\n\n"


def test_generation_prompt_ends_at_assistant_and_supervises_nothing():
    layout = encode_conversation([("<image>\nDescribe.", None)], encode, 2, "sandwich", fill_id=FILL)
    assert decode(layout.ids[layout.image_span[1]:]).endswith("Describe.\n\nAssistant:")
    assert sum(layout.loss_mask) == 0


@pytest.mark.parametrize(
    "turns, message",
    [
        ([("<image> <image>", "x")], "one <image>"),
        ([("<image>", "x"), ("<image>", "y")], "only one <image>"),
        ([("a", None), ("b", "y")], "only the last turn"),
    ],
)
def test_conversation_errors(turns, message):
    with pytest.raises(ValueError, match=message):
        encode_conversation(turns, encode, 2)


def test_place_image_rejects_unknown_position():
    with pytest.raises(ValueError, match="image_position"):
        place_image("<image>", "middle")


def test_collate_shifts_pads_and_keeps_spans():
    a = build_layout([1, 2, 3, 4], [0, 0, 1, 1], image_at=1, n_image_tokens=2, fill_id=9)
    b = build_layout([5, 6, 7], [0, 1, 1], image_at=None, n_image_tokens=2)
    batch = collate([a, b], pad_id=0)
    assert batch.inputs.tolist() == [[1, 9, 9, 2, 3], [5, 6, 0, 0, 0]]
    assert batch.targets.tolist() == [[9, 9, 2, 3, 4], [6, 7, 0, 0, 0]]
    assert batch.loss_mask.tolist() == [[0, 0, 0, 1, 1], [1, 1, 0, 0, 0]]
    assert batch.image_spans == [(1, 3), (0, 0)]
    trailing_image = build_layout([1, 2], [0, 0], image_at=2, n_image_tokens=2)
    with pytest.raises(ValueError, match="nothing follows"):
        collate([trailing_image])


def test_splice_places_image_tokens_and_routes_gradients():
    text = torch.randn(2, 6, 4, requires_grad=True)
    image = torch.randn(2, 2, 4, requires_grad=True)
    out = splice_image_tokens(text, image, [(1, 3), (4, 4)])
    assert torch.equal(out[0, 1:3], image[0])
    assert torch.equal(out[0, [0, 3, 4, 5]], text[0, [0, 3, 4, 5]])
    assert torch.equal(out[1], text[1])  # an empty span leaves the sample untouched
    out.sum().backward()
    assert torch.equal(text.grad[0, 1:3], torch.zeros(2, 4))  # overwritten embeddings get no gradient
    assert torch.equal(text.grad[0, 0], torch.ones(4))
    assert torch.equal(image.grad[0], torch.ones(2, 4)) and torch.equal(image.grad[1], torch.zeros(2, 4))
    with pytest.raises(ValueError, match="holds 3 tokens"):
        splice_image_tokens(text, image, [(1, 4), (0, 0)])


def reference_loss(logits, targets, mask):
    per_sample = []
    for b in range(logits.shape[0]):
        terms = []
        for t in range(logits.shape[1]):
            if mask[b, t]:
                row = logits[b, t].tolist()
                log_z = math.log(sum(math.exp(v) for v in row))
                terms.append(log_z - row[targets[b, t]])
        per_sample.append(sum(terms) / max(len(terms), 1))
    return sum(per_sample) / len(per_sample)


def test_per_sample_loss_matches_a_direct_computation():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7, dtype=torch.float64)
    targets = torch.randint(0, 7, (3, 5))
    mask = torch.tensor([[0, 1, 1, 1, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]])
    assert per_sample_loss(logits, targets, mask).item() == pytest.approx(reference_loss(logits, targets, mask), rel=1e-6)


def test_per_sample_loss_weights_samples_not_tokens_and_ignores_unmasked_logits():
    torch.manual_seed(1)
    logits = torch.randn(2, 6, 5, requires_grad=True)
    targets = torch.randint(0, 5, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1]])
    loss = per_sample_loss(logits, targets, mask)
    separate = (per_sample_loss(logits[:1], targets[:1], mask[:1]) + per_sample_loss(logits[1:], targets[1:], mask[1:])) / 2
    assert torch.allclose(loss, separate)
    token_mean = torch.nn.functional.cross_entropy(logits[mask.bool()], targets[mask.bool()])
    assert not torch.allclose(loss, token_mean)  # the one-token sample weighs as much as the five-token one
    loss.backward()
    assert torch.equal(logits.grad[~mask.bool()], torch.zeros(6, 5))
