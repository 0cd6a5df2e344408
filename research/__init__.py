"""The paper's claims as experiments, one command each: `eaglefinch research <experiment> --out DIR`.

Every experiment varies one thing at equal data, steps and seeds, and writes results.json, results.md
(a Markdown table) and its plots into DIR. Commands, settings and results: RESEARCH.md.
"""
