#!/usr/bin/env python3
"""Checks, without bitbake, that meta-rota's recipes find their sources on every series
its LAYERSERIES_COMPAT claims.

For each claimed series this takes the variables OE-core's bitbake.conf of that series
sets for unpacking (SERIES below: WORKDIR only on scarthgap; UNPACKDIR ??= ... from
styhead on) and evaluates, per recipe, its assignments to UNPACKDIR and S (its own and
those of the files it requires) with bitbake's rules for =, ?=, ??= and inline python
${@d.getVar(...) or d.getVar(...)}. Then:
  - the recipe leaves UNPACKDIR as bitbake.conf sets it (a ?= would replace a ??=);
  - S is where the fetcher puts the sources: <unpackdir>/<destsuffix> for the git
    source, the unpack directory itself for recipes with only file:// sources;
  - every file:// in SRC_URI exists in the recipe's files/ directory (or a directory
    FILESEXTRAPATHS adds), for recipes and bbappends;
  - every claimed series is a known OE-core series name.
What it does not prove: that bitbake parses the whole recipe (classes, tasks, the
cargo build) — nothing short of bitbake on each series does. With --bitbake-lib
DIR (bitbake's lib/ directory) the UNPACKDIR/S assignments are evaluated by bitbake's
own parser instead of the model here.
"""
import argparse
import glob
import os
import re
import sys

LAYER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "yocto-layer", "meta-rota")
WORKDIR = "/WORKDIR"
# OE-core's conf/bitbake.conf, per series: what it assigns to UNPACKDIR (None: nothing).
SERIES = {
    "scarthgap": None,
    "styhead": ("??=", "${WORKDIR}/sources-unpack"),
    "walnascar": ("??=", "${WORKDIR}/sources-unpack"),
    "whinlatter": ("??=", "${WORKDIR}/sources"),
    "wrynose": ("??=", "${WORKDIR}/sources"),
}

ASSIGN = re.compile(r'^(UNPACKDIR|S)\s*(\?\?=|\?=|:=|=)\s*"(.*)"\s*$')


def assignments(path, seen=None):
    """(var, op, value) of UNPACKDIR and S, following `require`/`include` in the layer."""
    seen = seen or set()
    out = []
    for line in open(path):
        line = line.strip()
        m = re.match(r'^(require|include)\s+(\S+)$', line)
        if m:
            for cand in (os.path.join(os.path.dirname(path), m.group(2)), os.path.join(LAYER, m.group(2))):
                if os.path.exists(cand) and cand not in seen:
                    seen.add(cand)
                    out += assignments(cand, seen)
                    break
            continue
        m = ASSIGN.match(line)
        if m:
            out.append(m.groups())
    return out


class Model:
    """bitbake's assignment rules for the operators the layer uses."""

    def __init__(self, base):
        self.vars = {"WORKDIR": (WORKDIR, False)}  # name -> (value, weak)
        if base:
            self.vars["UNPACKDIR"] = (base[1], True)

    def assign(self, var, op, value):
        cur = self.vars.get(var)
        if op == "=" or op == ":=":
            self.vars[var] = (self.expand(value) if op == ":=" else value, False)
        elif op == "?=":
            # ?= sets unless a value other than a ??= default is there: it replaces a
            # weak default (bitbake's getVar(..., noweakdefault=True)).
            if cur is None or cur[1]:
                self.vars[var] = (value, False)
        elif op == "??=":
            if cur is None or cur[1]:
                self.vars[var] = (value, True)

    def get(self, var):
        v = self.vars.get(var)
        return None if v is None else self.expand(v[0])

    def expand(self, value):
        def py(m):
            # ${@d.getVar('A') or d.getVar('B')}
            for name in re.findall(r"d\.getVar\('([A-Z_]+)'\)", m.group(1)):
                v = self.get(name)
                if v:
                    return v
            return "None"
        value = re.sub(r"\$\{@(.*?)\}", py, value)
        return re.sub(r"\$\{([A-Z_]+)\}", lambda m: self.get(m.group(1)) or m.group(0), value)


def evaluate_bitbake(lib, base, assigns):
    sys.path.insert(0, lib)
    import bb.data  # noqa: E402
    import bb.parse  # noqa: E402
    import tempfile
    d = bb.data.init()
    d.setVar("WORKDIR", WORKDIR)
    lines = []
    if base:
        lines.append('UNPACKDIR %s "%s"' % base)
    lines += ['%s %s "%s"' % a for a in assigns]
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
        f.write("\n".join(lines) + "\n")
    bb.parse.handle(f.name, d, include=True)
    os.unlink(f.name)
    return d.getVar("UNPACKDIR"), d.getVar("S")


def src_uri(text):
    joined = text.replace("\\\n", " ")
    uris = []
    for m in re.finditer(r'^SRC_URI(?::[^ ]*)?\s*(?:\+=|=|\?=)\s*"([^"]*)"', joined, re.M):
        uris += m.group(1).split()
    return uris


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bitbake-lib", help="bitbake's lib/ directory: evaluate with its parser")
    args = ap.parse_args()
    conf = open(os.path.join(LAYER, "conf/layer.conf")).read()
    claimed = re.search(r'^LAYERSERIES_COMPAT_rota = "([^"]*)"', conf, re.M).group(1).split()
    errors = []
    for s in claimed:
        if s not in SERIES:
            errors.append("LAYERSERIES_COMPAT_rota names %r, not a series this check knows" % s)
    recipes = sorted(glob.glob(os.path.join(LAYER, "recipes-*/*/*.bb")))
    appends = sorted(glob.glob(os.path.join(LAYER, "dynamic-layers/*/*/*/*.bbappend")))
    for series in claimed:
        base = SERIES.get(series)
        for r in recipes:
            name = os.path.relpath(r, LAYER)
            text = open(r).read()
            uris = src_uri(text)
            for inc in re.findall(r'^require\s+(\S+)$', text, re.M):
                for cand in (os.path.join(os.path.dirname(r), inc), os.path.join(LAYER, inc)):
                    if os.path.exists(cand):
                        uris += src_uri(open(cand).read())
                        break
            assigns = assignments(r)
            if args.bitbake_lib:
                unpack, s_val = evaluate_bitbake(args.bitbake_lib, base, assigns)
            else:
                m = Model(base)
                for a in assigns:
                    m.assign(*a)
                unpack, s_val = m.get("UNPACKDIR"), m.get("S")
            want_unpack = WORKDIR if base is None else base[1].replace("${WORKDIR}", WORKDIR)
            if (unpack or WORKDIR) != want_unpack:
                errors.append("%s on %s: UNPACKDIR is %s, bitbake.conf's is %s" % (name, series, unpack, want_unpack))
            git = [u for u in uris if u.startswith("git://") or u.startswith("${ROTA_GIT_URI}")]
            if git:
                dest = re.search(r"destsuffix=([^;\s]+)", " ".join(git))
                want_s = want_unpack + "/" + (dest.group(1) if dest else "git")
            else:
                want_s = want_unpack
            if s_val != want_s:
                errors.append("%s on %s: S is %s, the sources are unpacked to %s" % (name, series, s_val, want_s))
            else:
                print("check-yocto-series: %s on %s: S = %s" % (name, series, s_val.replace(WORKDIR, "${WORKDIR}")))
    for f in recipes + appends:
        text = open(f).read()
        dirs = [os.path.join(os.path.dirname(f), "files")]
        for extra in re.findall(r'FILESEXTRAPATHS:prepend[^=]*:=\s*"([^"]*)"', text):
            for d in extra.split(":"):
                if d:
                    dirs.append(os.path.normpath(d.replace("${THISDIR}", os.path.dirname(f))))
        for u in src_uri(text):
            if u.startswith("file://"):
                fn = u[len("file://"):].split(";")[0]
                if not any(os.path.exists(os.path.join(d, fn)) for d in dirs):
                    errors.append("%s: file://%s is in none of %s" % (os.path.relpath(f, LAYER), fn, dirs))
    for e in errors:
        print("check-yocto-series: " + e, file=sys.stderr)
    if errors:
        sys.exit(1)
    print("check-yocto-series: OK (%s; %s)" % (" ".join(claimed), "bitbake's parser" if args.bitbake_lib else "model of bitbake's rules"))


main()
