#!/usr/bin/env python3
"""Regenerates the key table of docs/configuration.md from SyncConfiguration.keys,
so the documentation cannot drift from the code (a test checks every key is listed)."""
import pathlib, re
root = pathlib.Path(__file__).resolve().parent.parent
src = (root / "Sources/SyncService/SyncConfiguration.swift").read_text()
rows = re.findall(r'Key\(name: "([^"]+)", type: "((?:[^"\\]|\\.)*)", defaultText: "((?:[^"\\]|\\.)*)", secret: (\w+), help: "((?:[^"\\]|\\.)*)"\)', src)
table = ["| key | type | default | meaning |", "|---|---|---|---|"]
for name, typ, default, _secret, help_ in rows:
    # A | inside a cell would end it: escaped as \|.
    u = lambda t: t.replace('\\"', '"').replace("|", "\\|")
    table.append(f"| `{name}` | {u(typ)} | {u(default)} | {u(help_)} |")
doc = root / "docs/configuration.md"
text = doc.read_text()
start = text.index("| key | type | default | meaning |")
end = text.index("\n\n", start)
doc.write_text(text[:start] + "\n".join(table) + text[end:])
print(f"{len(rows)} keys")
