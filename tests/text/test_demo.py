"""The text demo's check that a reply is in its prompt's script."""
from eaglefinch.text.demo import PROMPTS, script_of, user_message


def test_script_of_names_the_writing_system_of_most_letters():
    assert [script_of(user_message(p)) for p in PROMPTS] == [
        "Latin", "Latin", "Cyrillic", "Han", "Devanagari", "Japanese", "Hangul"]
    assert script_of("Schwe емоції") == "Cyrillic"          # most letters decide
    assert script_of("一个話すべての？") == "Japanese"        # kana with Han: Japanese, not Chinese
    assert script_of("1, 2, 3!") == "none"
