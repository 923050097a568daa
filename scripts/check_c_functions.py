#!/usr/bin/env python3
"""Checks that this build's library still serves every released version's SQL.

Between installing a new pg_vision library and `ALTER EXTENSION pg_vision UPDATE`, a
database keeps its older SQL definitions, which call the library's C symbols by name. A
symbol whose arguments changed, or whose result columns were inserted or reordered, would
make PostgreSQL read a row or an argument as the wrong type: a crashed backend, from any
role that may call the function. So, for every C function of every released install script
(pgrx-tests/upgrade/pg_vision--<version>.sql), against the current install script:
  - the symbol is still exported by the library (a function dropped from the SQL keeps its
    symbol, `#[pg_extern(sql = false)]`, as image_checksum's does);
  - its argument types are the same (names and defaults may change);
  - its result type is the same, or, for RETURNS TABLE, the old columns' types are the first
    columns of the new ones (new columns only ever appended).
scripts/upgrade_test.sh runs it, and also calls every old table function before updating.

Usage: check_c_functions.py CURRENT_INSTALL_SCRIPT LIBRARY.so OLD_SCRIPT...
"""
import re
import subprocess
import sys


def split_top(text):
    """Splits at commas outside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [p.strip() for p in parts + [cur] if p.strip()]


def types(decls):
    """The types of `"name" TYPE [DEFAULT ...]` declarations, normalised."""
    out = []
    for d in split_top(decls):
        d = re.split(r"\s+DEFAULT\s+", d, flags=re.I)[0]
        d = re.sub(r'^"[^"]*"\s+', "", d.strip())
        out.append(re.sub(r"\s+", " ", d).lower())
    return out


def c_functions(path):
    """{symbol: (sql name, argument types, result: ('table', column types) or ('scalar', type))}."""
    text = re.sub(r"/\*.*?\*/", "", open(path).read(), flags=re.S)
    text = re.sub(r"--[^\n]*", "", text)
    found = {}
    for m in re.finditer(r"CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+(.*?);", text, re.S | re.I):
        stmt = m.group(1)
        symbol = re.search(r"'MODULE_PATHNAME'\s*,\s*'(\w+)'", stmt)
        if not symbol:
            continue
        head = re.match(r'\s*"?([\w.]+)"?\s*\((.*?)\)\s*RETURNS\s+(.*?)\s+(?:STRICT|IMMUTABLE|STABLE|VOLATILE|PARALLEL|LANGUAGE|SECURITY|COST)\b',
                        stmt, re.S | re.I)
        if not head:
            sys.exit(f"{path}: cannot read the declaration of {symbol.group(1)}")
        name, args, returns = head.groups()
        table = re.match(r"TABLE\s*\((.*)\)\s*$", returns.strip(), re.S | re.I)
        result = ("table", types(table.group(1))) if table else ("scalar", re.sub(r"\s+", " ", returns.strip()).lower())
        found[symbol.group(1)] = (name, types(args), result)
    return found


def exported(library):
    out = subprocess.run(["nm", "-D", "--defined-only", library], check=True, capture_output=True, text=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def main():
    current_script, library, *old_scripts = sys.argv[1:]
    current, symbols = c_functions(current_script), exported(library)
    problems = []
    for old_script in old_scripts:
        for symbol, (name, args, result) in c_functions(old_script).items():
            where = f"{old_script}: {name}() ({symbol})"
            if symbol not in symbols or f"pg_finfo_{symbol}" not in symbols:
                problems.append(f"{where}: the library no longer exports it")
                continue
            if symbol not in current:
                continue  # kept for old SQL only (sql = false); its signature is the old one by construction
            _, new_args, new_result = current[symbol]
            if new_args != args:
                problems.append(f"{where}: arguments changed from ({', '.join(args)}) to ({', '.join(new_args)})")
            if result[0] != new_result[0] or (result[0] == "scalar" and result != new_result):
                problems.append(f"{where}: result changed from {result[1]} to {new_result[1]}")
            elif result[0] == "table" and new_result[1][: len(result[1])] != result[1]:
                problems.append(f"{where}: result columns ({', '.join(result[1])}) are not the first columns of "
                                f"({', '.join(new_result[1])}): append new columns, never insert or reorder them")
    if problems:
        print("\n".join(["FAIL: the library no longer serves released SQL:"] + problems))
        return 1
    print(f"C functions: this library serves the SQL of {len(old_scripts)} released versions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
