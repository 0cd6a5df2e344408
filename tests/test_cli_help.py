"""`eaglefinch --help` names every command of every domain (a new command must not hide)."""
import argparse

from eaglefinch.cli import build_parser


def subcommands(parser):
    action = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    return action, (action.choices if action else {})


def test_the_top_level_help_lists_every_command_of_every_domain():
    domains_action, domains = subcommands(build_parser())
    helps = {choice.dest: choice.help for choice in domains_action._choices_actions}
    assert set(helps) == {"text", "music", "visual", "research", "serve", "merge"}   # serve and merge: one command each
    for name, domain in domains.items():
        _, commands = subcommands(domain)
        missing = [command for command in commands if command not in helps[name]]
        assert missing == [], f"`eaglefinch --help` does not list {name} {missing}"
