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

    def turn(self, role: str, text: str) -> str:
        """One message as it is written in the prompt, separator included."""
        text = text.replace("\r\n", "\n").strip()
        while self.separator in text:
            text = text.replace(self.separator, "\n")
        return f"{self.names[role]}: {text}{self.separator}"

    @property
    def reply_start(self) -> str:
        """What the prompt ends with: the assistant's name, for the model to go on from."""
        return f"{self.names['assistant']}:"

    def segments(self, messages) -> list[str]:
        """The prompt as one piece per message, then the reply start: the server tokenizes each
        piece on its own and caches the state after each, so a conversation that goes on reads
        only its new messages. (With the World vocabulary no token spans a "\n\n" followed by a
        name, so the pieces' ids are the ids of the whole prompt.)"""
        return [self.turn(m["role"], m["content"]) for m in messages] + [self.reply_start]

    def render(self, messages) -> str:
        """messages: [{"role": "system" | "user" | "assistant", "content": str}, ...]: the whole prompt."""
        return "".join(self.segments(messages))
