"""How chat messages become one prompt, and where a reply ends."""
import dataclasses


@dataclasses.dataclass
class ChatTemplate:
    """The RWKV World chat format by default: each turn "Name: text", turns separated by a blank line,
    the prompt ending in "Assistant:", and a reply ending at the next blank line:

        System: You are terse.\\n\\nUser: Hi\\n\\nAssistant: Hello.\\n\\nUser: Bye\\n\\nAssistant:

    A blank line inside a message would end its turn early, so it becomes one newline (as the
    official chat demos do). Change the format by passing another ChatTemplate to `create_app`.
    """
    names: dict = dataclasses.field(default_factory=lambda: {"system": "System", "user": "User",
                                                             "assistant": "Assistant"})
    separator: str = "\n\n"
    stop: list = dataclasses.field(default_factory=lambda: ["\n\n"])

    def render(self, messages) -> str:
        """messages: [{"role": "system" | "user" | "assistant", "content": str}, ...]."""
        turns = []
        for m in messages:
            text = m["content"].replace("\r\n", "\n").strip()
            while self.separator in text:
                text = text.replace(self.separator, "\n")
            turns.append(f"{self.names[m['role']]}: {text}")
        return self.separator.join(turns) + self.separator + f"{self.names['assistant']}:"
